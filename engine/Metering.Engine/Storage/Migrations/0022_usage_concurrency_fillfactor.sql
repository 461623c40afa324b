-- Every commit rewrites the concurrency sums of each minute it touches, and a batch of raw-log
-- jobs that span hours touches thousands of them. With full pages each rewrite is a new heap page
-- entry plus a new index entry, and the dead versions pile up until vacuum. Leaving room on each
-- page lets PostgreSQL update in place (a heap-only tuple: no index entry, pruned on the page), which
-- halves the cost of the upsert. New pages take the setting; existing ones as they are rewritten.
ALTER TABLE usage_concurrency SET (fillfactor = 40);
