using System.Text;
using Dapper;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Audit;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.RawLogs;

[Collection(PostgresCollection.Name)]
public sealed class RawLogUploadTests(PostgresFixture postgres)
{
    private static readonly byte[] Sacct = Encoding.UTF8.GetBytes(RawLogSamples.Sacct);

    [Fact]
    public async Task Sacct_upload_commits_good_lines_and_reports_bad_ones_by_line_number()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        UploadReport report = await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length]);

        Assert.True(report.Complete);
        Assert.Equal((ulong)Sacct.Length, report.CommittedOffset);
        Assert.Equal((12ul, 5ul, 4ul, 3ul), (report.Lines, report.Records, report.LinesSkipped, report.LinesRefused));
        Assert.Equal(RawLogSamples.SacctRefusals, report.Errors.Select(e => ((long)e.Line, e.Reason)));
        Assert.Equal(5ul, report.CommittedSequence);
        var jobs = await server.QueryAsync<string>("SELECT job_id FROM usage_records WHERE stream_id = 'slurm-a' ORDER BY sequence");
        Assert.Equal(["4201", "4202", "4205", "4207", "4209"], jobs);
        await using var dataSource = Database.CreateDataSource(server.ConnectionString);
        ChainVerification chain = await new ChainVerifier(dataSource).VerifyStreamAsync(TestRecords.Provider, "slurm-a");
        Assert.True(chain.Intact, chain.Evidence);
        Assert.Equal(report.ChainHead.ToByteArray(), chain.ComputedHead);
    }

    [Fact]
    public async Task A_file_split_at_every_byte_position_gives_identical_results()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        UploadReport whole = await UploadAsync(server, "whole", "split-whole", Sacct, chunks: [Sacct.Length]);
        string expected = await ContentAsync(server, "split-whole");

        // Upload k cuts the file at k, k + Stride, k + 2 × Stride, …, so that over the Stride
        // uploads every byte position (0 and the end included) is a chunk boundary once, at a
        // Stride-th of the uploads that cutting at one position per upload would take.
        const int Stride = 61;
        var covered = new bool[Sacct.Length + 1];
        for (int phase = 0; phase < Stride; phase++)
        {
            var chunks = new List<int> { phase };
            for (int at = phase; at < Sacct.Length; at += Stride)
            {
                chunks.Add(Math.Min(Stride, Sacct.Length - at));
            }

            if ((Sacct.Length - phase) % Stride == 0)
            {
                chunks.Add(0); // a cut at the very end: an empty last chunk, as phase 0 sends an empty first one
            }

            for (int cut = phase; cut <= Sacct.Length; cut += Stride)
            {
                covered[cut] = true;
            }

            string stream = $"split-{phase}";
            UploadReport report = await UploadAsync(server, stream, stream, Sacct, chunks: [.. chunks]);
            Assert.Equal((whole.Lines, whole.Records, whole.LinesSkipped, whole.LinesRefused), (report.Lines, report.Records, report.LinesSkipped, report.LinesRefused));
            Assert.Equal(whole.Errors, report.Errors);
            Assert.Equal(expected, await ContentAsync(server, stream));
        }

        Assert.All(covered, Assert.True);
    }

    [Fact]
    public async Task Repeating_a_finished_upload_commits_nothing_twice()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        UploadReport first = await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length]);

        UploadReport again = await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [100, Sacct.Length - 100]);

        // Each report carries a fresh receipt (its own time and signature) for the same sequence
        // and head; everything else is the same report.
        Assert.Equal(first.Receipt.Signed.Span[..^8].ToArray(), again.Receipt.Signed.Span[..^8].ToArray());
        static UploadReport WithoutReceipt(UploadReport report)
        {
            UploadReport copy = report.Clone();
            copy.Receipt = null;
            return copy;
        }

        Assert.Equal(WithoutReceipt(first), WithoutReceipt(again));
        Assert.Equal(5L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_line_errors"));
    }

    [Fact]
    public async Task An_interrupted_upload_resumes_from_the_committed_offset()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        UploadReport whole = await UploadAsync(server, "whole", "ref", Sacct, chunks: [Sacct.Length]);

        // The first call ends after 700 bytes, in the middle of a line.
        UploadReport partial = await UploadAsync(server, "u1", "resumed", Sacct, chunks: [700], complete: false);
        Assert.False(partial.Complete);
        int lastNewline = Array.LastIndexOf(Sacct, (byte)'\n', 699) + 1;
        Assert.Equal((ulong)lastNewline, partial.CommittedOffset);

        UploadReport status = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "u1" }, TestServer.Bearer());
        Assert.Equal(partial.CommittedOffset, status.CommittedOffset);
        UploadReport resumed = await UploadAsync(server, "u1", "resumed", Sacct[(int)status.CommittedOffset..], chunks: [Sacct.Length - (int)status.CommittedOffset], offset: status.CommittedOffset);

        Assert.True(resumed.Complete);
        Assert.Equal((whole.Lines, whole.Records, whole.LinesSkipped, whole.LinesRefused), (resumed.Lines, resumed.Records, resumed.LinesSkipped, resumed.LinesRefused));
        Assert.Equal(whole.Errors, resumed.Errors);
        Assert.Equal(await ContentAsync(server, "ref"), await ContentAsync(server, "resumed"));
    }

    [Fact]
    public async Task A_job_in_two_overlapping_exports_is_metered_once()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await UploadAsync(server, "day-19", "slurm-a", Sacct, chunks: [Sacct.Length]);
        // The next day's export repeats the job that crossed midnight (4205) and the 24-hour job
        // (4209), and adds one new job.
        byte[] nextDay = Encoding.UTF8.GetBytes(string.Join('\n', RawLogSamples.Sacct.Split('\n').Where(l => l.StartsWith("JobID", StringComparison.Ordinal) || l.StartsWith("4205|", StringComparison.Ordinal) || l.StartsWith("4209|", StringComparison.Ordinal)))
            + "\n4301|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T23:00:00|2026-11-21T01:00:00|02:00:00|COMPLETED\n");

        UploadReport report = await UploadAsync(server, "day-20", "slurm-a", nextDay, chunks: [nextDay.Length]);

        Assert.Equal((1ul, 2ul), (report.Records, report.LinesDuplicate));
        Assert.Equal(6ul, report.CommittedSequence);
        Assert.Equal(1L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE job_id = '4205'"));
        Assert.Equal([1L, 2L, 3L, 4L, 5L, 6L], await server.QueryAsync<long>("SELECT sequence FROM usage_records WHERE stream_id = 'slurm-a' ORDER BY 1"));
    }

    [Fact]
    public async Task An_upload_claiming_more_devices_than_the_fleet_is_refused_even_when_its_flushes_each_fit()
    {
        // Flushes of four jobs: each flush alone fits the seeded fleet of 250,000 H100, but the
        // fourth brings the minute to 16 × 16,384 = 262,144 devices at once. A sacct flush keeps
        // room for one line's records per GPU type and a held `.batch` line's, so it ends that
        // far short of the limit.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax });
        var lines = new StringBuilder(RawLogSamples.Sacct.Split('\n')[0] + "\n");
        for (int job = 0; job < 16; job++)
        {
            lines.Append(System.Globalization.CultureInfo.InvariantCulture, $"{9000 + job}|lab-vision|gpu-h100|gres/gpu:h100=16384|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n");
        }

        byte[] log = Encoding.UTF8.GetBytes(lines.ToString());

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "cheat", "cheat", log, chunks: [log.Length]));

        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Equal(12L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'cheat'"));
        Assert.Equal(12L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_jobs WHERE stream_id = 'cheat'"));
        UploadReport status = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "cheat" }, TestServer.Bearer());
        Assert.Equal((12ul, 12ul), (status.Records, status.CommittedSequence));
    }

    [Fact]
    public async Task An_export_touching_more_minutes_than_one_fleet_check_takes_commits_in_several_flushes()
    {
        // Thirteen two-hour jobs touch 13 × 120 minutes, more than the 1,440 one batch may add to
        // the fleet check: a single flush would be refused as too large, so the upload ends its
        // flushes early by the minutes they span.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { ConcurrencyMinutesPerBatchMax = 1_440, RecordDurationMax = TimeSpan.FromHours(3) });
        var lines = new StringBuilder(RawLogSamples.Sacct.Split('\n')[0] + "\n");
        var start = new DateTime(2026, 11, 18, 0, 0, 0, DateTimeKind.Unspecified);
        for (int job = 0; job < 13; job++)
        {
            DateTime from = start.AddHours(3 * job);
            lines.Append(System.Globalization.CultureInfo.InvariantCulture, $"{9100 + job}|lab-vision|gpu-h100|gres/gpu:h100=8|{from:yyyy-MM-ddTHH:mm:ss}|{from.AddHours(2):yyyy-MM-ddTHH:mm:ss}|02:00:00|COMPLETED\n");
        }

        byte[] log = Encoding.UTF8.GetBytes(lines.ToString());

        UploadReport report = await UploadAsync(server, "long", "long", log, chunks: [log.Length]);

        Assert.True(report.Complete);
        Assert.Equal((13ul, 0ul, 13ul), (report.Records, report.LinesRefused, report.CommittedSequence));
        Assert.Equal(13L * 120, await server.ScalarAsync<long>("SELECT count(*) FROM usage_concurrency WHERE device_model = 'H100-SXM' AND share_denominator = 1 AND minute_at >= '2026-11-17' AND minute_at < '2026-11-21'"));
    }

    [Fact]
    public async Task A_job_twice_in_one_file_is_metered_once()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] log = Encoding.UTF8.GetBytes(RawLogSamples.Sacct + RawLogSamples.Sacct.Split('\n')[1] + "\n");
        UploadReport report = await UploadAsync(server, "twice", "twice", log, chunks: [log.Length]);
        Assert.Equal((5ul, 1ul), (report.Records, report.LinesDuplicate));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_flush_failing_while_the_next_is_parsed_keeps_what_committed_and_the_upload_resumes_right_after_it(int commitsInFlight)
    {
        // Flushes of four jobs, sent in one chunk: the parser reads the third flush's lines while
        // the second commits. The second flush's commit fails (a trigger refuses one of its jobs),
        // so the call must end with only the first flush committed and nothing parsed after it
        // kept; resumed without the fault, the upload continues right after the first flush. With
        // one commit in flight each flush commits by itself; with two, each is begun ahead.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax, GroupCommitsInFlightMax = commitsInFlight });
        byte[] log = Jobs(16);
        await UploadAsync(server, "reference", "reference", log, chunks: [log.Length]);
        await server.ExecuteAsync("""
            CREATE FUNCTION refuse_job_9006() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.stream_id = 'faulty' AND NEW.job_id = '9006' THEN RAISE EXCEPTION 'job 9006 may not commit'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER refuse_job_9006 BEFORE INSERT ON raw_log_jobs FOR EACH ROW EXECUTE FUNCTION refuse_job_9006();
            """);

        await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "faulty", "faulty", log, chunks: [log.Length]));

        UploadReport status = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "faulty" }, TestServer.Bearer());
        int afterFirstFlush = IndexAfterLines(log, 1 + 4);
        Assert.Equal(((ulong)afterFirstFlush, 5ul, 4ul, 1ul, 4ul), (status.CommittedOffset, status.Lines, status.Records, status.LinesSkipped, status.CommittedSequence));
        Assert.Equal(4L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'faulty'"));
        Assert.Equal(["9000", "9001", "9002", "9003"], await server.QueryAsync<string>("SELECT job_id FROM raw_log_jobs WHERE stream_id = 'faulty' ORDER BY sequence"));

        await server.ExecuteAsync("DROP TRIGGER refuse_job_9006 ON raw_log_jobs");
        UploadReport resumed = await UploadAsync(server, "faulty", "faulty", log[afterFirstFlush..], chunks: [log.Length - afterFirstFlush], offset: (ulong)afterFirstFlush);

        await AssertEndsAsReferenceAsync(server, resumed, "faulty");
    }

    [Theory]
    [InlineData(1 + 5)]
    [InlineData(1 + 13)]
    public async Task A_job_repeated_in_a_later_flush_is_metered_once(int repeatAfterLines)
    {
        // The repeat lies in the next flush (whose jobs are copied while the flush that holds the
        // job commits, so raw_log_jobs' key waits for that commit and then refuses it) or three
        // flushes after the job (refused by the key at once). Either way the flush that carries it
        // is rolled back and committed again without it.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax });
        string jobs = Encoding.UTF8.GetString(Jobs(16));
        byte[] log = Encoding.UTF8.GetBytes(jobs.Insert(IndexAfterLines(Encoding.UTF8.GetBytes(jobs), repeatAfterLines), jobs.Split('\n')[2] + "\n"));

        UploadReport report = await UploadAsync(server, "repeat", "repeat", log, chunks: [log.Length]);

        Assert.True(report.Complete);
        Assert.Equal((18ul, 16ul, 1ul, 16ul), (report.Lines, report.Records, report.LinesDuplicate, report.CommittedSequence));
        Assert.Equal(1L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'repeat' AND job_id = '9001'"));
        Assert.Equal(Enumerable.Range(1, 16).Select(i => (long)i), await server.QueryAsync<long>("SELECT sequence FROM usage_records WHERE stream_id = 'repeat' ORDER BY 1"));
    }

    [Fact]
    public async Task A_flush_copies_its_rows_and_jobs_while_the_flush_before_it_waits_to_commit()
    {
        // The test holds the stream's head row, so the first flush, its rows copied, waits for the
        // lock. The second flush must copy its rows and jobs meanwhile, in a transaction of its
        // own, and wait for the first to end before it locks; released, the upload ends exactly as
        // one committed flush by flush.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax });
        byte[] log = Jobs(16);
        UploadReport reference = await UploadAsync(server, "reference", "reference", log, chunks: [log.Length]);

        Task<UploadReport> upload;
        await using (HeldHead held = await HeldHead.TakeAsync(server, "piped"))
        {
            upload = UploadAsync(server, "piped", "piped", log, chunks: [log.Length]);
            await WaitUntilAsync(server, WaitingForHeadSql, 1);
            await WaitUntilAsync(server, CopiedAheadSql, 1);
            Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'piped'"));
        }

        UploadReport report = await upload;
        Assert.True(report.Complete);
        Assert.Equal((reference.Lines, reference.Records, reference.CommittedSequence), (report.Lines, report.Records, report.CommittedSequence));
        Assert.Equal(await ContentAsync(server, "reference"), await ContentAsync(server, "piped"));
        Assert.Equal(Enumerable.Range(1, 16).Select(i => (long)i), await server.QueryAsync<long>("SELECT sequence FROM raw_log_jobs WHERE stream_id = 'piped' ORDER BY 1"));
        await using var dataSource = Database.CreateDataSource(server.ConnectionString);
        ChainVerification chain = await new ChainVerifier(dataSource).VerifyStreamAsync(TestRecords.Provider, "piped");
        Assert.True(chain.Intact, chain.Evidence);
        Assert.Equal(report.ChainHead.ToByteArray(), chain.ComputedHead);
    }

    [Fact]
    public async Task A_later_flush_failing_while_the_one_before_commits_keeps_that_one_and_the_upload_resumes_right_after_it()
    {
        // The first flush waits for the head row the test holds while the second copies its jobs,
        // one of which a trigger refuses (and counts, outside any transaction). Only after that
        // failure is the first flush let go: it commits, the call reports the second's failure,
        // and nothing of the second or of anything parsed after it is kept.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax });
        byte[] log = Jobs(16);
        await UploadAsync(server, "reference", "reference", log, chunks: [log.Length]);
        await server.ExecuteAsync("""
            CREATE SEQUENCE refusals_fired;
            CREATE FUNCTION refuse_job_9005() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
            BEGIN IF NEW.stream_id = 'later' AND NEW.job_id = '9005' THEN PERFORM nextval('refusals_fired'); RAISE EXCEPTION 'job 9005 may not commit'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER refuse_job_9005 BEFORE INSERT ON raw_log_jobs FOR EACH ROW EXECUTE FUNCTION refuse_job_9005();
            """);

        Task<UploadReport> upload;
        await using (HeldHead held = await HeldHead.TakeAsync(server, "later"))
        {
            upload = UploadAsync(server, "later", "later", log, chunks: [log.Length]);
            await WaitUntilAsync(server, WaitingForHeadSql, 1);
            await WaitUntilAsync(server, "SELECT (CASE WHEN is_called THEN 1 ELSE 0 END)::bigint FROM refusals_fired", 1);
            Assert.Equal(0L, await server.ScalarAsync<long>("SELECT committed_offset FROM raw_log_uploads WHERE upload_id = 'later'"));
        }

        await Assert.ThrowsAsync<RpcException>(() => upload);

        int afterFirstFlush = IndexAfterLines(log, 1 + 4);
        UploadReport status = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "later" }, TestServer.Bearer());
        Assert.Equal(((ulong)afterFirstFlush, 5ul, 4ul, 4ul), (status.CommittedOffset, status.Lines, status.Records, status.CommittedSequence));
        Assert.Equal([1L, 2L, 3L, 4L], await server.QueryAsync<long>("SELECT sequence FROM usage_records WHERE stream_id = 'later' ORDER BY 1"));
        Assert.Equal(["9000", "9001", "9002", "9003"], await server.QueryAsync<string>("SELECT job_id FROM raw_log_jobs WHERE stream_id = 'later' ORDER BY sequence"));
        Assert.Equal(0L, await server.ScalarAsync<long>(OpenTransactionsSql));

        await server.ExecuteAsync("DROP TRIGGER refuse_job_9005 ON raw_log_jobs");
        UploadReport resumed = await UploadAsync(server, "later", "later", log[afterFirstFlush..], chunks: [log.Length - afterFirstFlush], offset: (ulong)afterFirstFlush);

        await AssertEndsAsReferenceAsync(server, resumed, "later");
    }

    [Fact]
    public async Task A_flush_failing_under_its_locks_rolls_back_the_next_one_already_copied_and_the_upload_resumes_from_the_start()
    {
        // The first flush fails after its locks (a trigger refuses its progress) once the second
        // has copied its rows and jobs, chained on the first's. The second must then be rolled
        // back unlocked: nothing of the upload is stored, no transaction is left open, and the
        // upload sent again from the start ends as one that never failed.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { UploadFlushRecordsMax = FourJobFlushRecordsMax });
        byte[] log = Jobs(16);
        await UploadAsync(server, "reference", "reference", log, chunks: [log.Length]);
        await server.ExecuteAsync("""
            CREATE FUNCTION refuse_first_progress() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.upload_id = 'early' AND OLD.committed_offset = 0 THEN RAISE EXCEPTION 'the first flush may not commit'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER refuse_first_progress BEFORE UPDATE ON raw_log_uploads FOR EACH ROW EXECUTE FUNCTION refuse_first_progress();
            """);

        Task<UploadReport> upload;
        await using (HeldHead held = await HeldHead.TakeAsync(server, "early"))
        {
            upload = UploadAsync(server, "early", "early", log, chunks: [log.Length]);
            await WaitUntilAsync(server, WaitingForHeadSql, 1);
            await WaitUntilAsync(server, CopiedAheadSql, 1);
        }

        await Assert.ThrowsAsync<RpcException>(() => upload);

        UploadReport status = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "early" }, TestServer.Bearer());
        Assert.Equal((0ul, 0ul, 0ul, 0ul), (status.CommittedOffset, status.Lines, status.Records, status.CommittedSequence));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'early'"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_jobs WHERE stream_id = 'early'"));
        Assert.Equal(0L, await server.ScalarAsync<long>(OpenTransactionsSql));

        await server.ExecuteAsync("DROP TRIGGER refuse_first_progress ON raw_log_uploads");
        UploadReport again = await UploadAsync(server, "early", "early", log, chunks: [log.Length]);

        await AssertEndsAsReferenceAsync(server, again, "early");
    }

    /// <summary>
    /// Where an upload of <c>Jobs(16)</c> that failed part way must end once sent again: complete,
    /// every line and record counted once, and stored exactly as the upload "reference" of the
    /// same lines that never failed.
    /// </summary>
    private static async Task AssertEndsAsReferenceAsync(TestServer server, UploadReport report, string stream)
    {
        Assert.True(report.Complete);
        Assert.Equal((17ul, 16ul, 0ul, 16ul), (report.Lines, report.Records, report.LinesDuplicate, report.CommittedSequence));
        Assert.Equal(await ContentAsync(server, "reference"), await ContentAsync(server, stream));
    }

    /// <summary>Flushes of four one-GPU jobs: a sacct flush keeps room for one line's records per GPU type and a held `.batch` line's.</summary>
    private const int FourJobFlushRecordsMax = 4 + (2 * Metering.Engine.RawLogs.SacctParser.GpuTypesMax) - 1;

    /// <summary>The server's connections waiting for a stream's head lock (a flush ready to commit).</summary>
    private const string WaitingForHeadSql = """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM ingest_streams%FOR UPDATE%'
        """;

    /// <summary>The server's transactions that have copied a flush's jobs and wait to lock (a flush begun ahead).</summary>
    private const string CopiedAheadSql = """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND state = 'idle in transaction' AND query LIKE 'COPY raw_log_jobs%'
        """;

    /// <summary>Transactions of other connections still open in the test database.</summary>
    private const string OpenTransactionsSql = """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start IS NOT NULL
        """;

    /// <summary>Polls <paramref name="sql"/> until it returns <paramref name="expected"/>; fails after 30 seconds.</summary>
    private static async Task WaitUntilAsync(TestServer server, string sql, long expected)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (await server.ScalarAsync<long>(sql) != expected)
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(30), $"Waited 30 s for {expected} from: {sql}");
            await Task.Delay(20);
        }
    }

    /// <summary>A stream's head row, created and locked by the test in a transaction of its own until disposed (rolled back).</summary>
    private sealed class HeldHead : IAsyncDisposable
    {
        private readonly NpgsqlConnection _connection;
        private readonly NpgsqlTransaction _transaction;

        private HeldHead(NpgsqlConnection connection, NpgsqlTransaction transaction) => (_connection, _transaction) = (connection, transaction);

        public static async Task<HeldHead> TakeAsync(TestServer server, string streamId)
        {
            await server.ExecuteAsync(
                "INSERT INTO ingest_streams (provider_id, stream_id, chain_head) VALUES (@provider, @streamId, decode(repeat('00', 32), 'hex'))",
                new { provider = TestRecords.Provider, streamId });
            var connection = new NpgsqlConnection(server.ConnectionString);
            await connection.OpenAsync();
            NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
            await connection.ExecuteAsync("SELECT 1 FROM ingest_streams WHERE provider_id = @provider AND stream_id = @streamId FOR UPDATE", new { provider = TestRecords.Provider, streamId }, transaction);
            return new HeldHead(connection, transaction);
        }

        public async ValueTask DisposeAsync()
        {
            await _transaction.DisposeAsync();
            await _connection.DisposeAsync();
        }
    }

    /// <summary>A sacct file of <paramref name="count"/> one-GPU jobs, 9000 on.</summary>
    private static byte[] Jobs(int count)
    {
        var lines = new StringBuilder(RawLogSamples.Sacct.Split('\n')[0] + "\n");
        for (int job = 0; job < count; job++)
        {
            lines.Append(System.Globalization.CultureInfo.InvariantCulture, $"{9000 + job}|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-20T08:{job:00}:00|2026-11-20T09:00:00|{TimeSpan.FromMinutes(60 - job):hh\\:mm\\:ss}|COMPLETED\n");
        }

        return Encoding.UTF8.GetBytes(lines.ToString());
    }

    /// <summary>The byte offset just past the first <paramref name="lines"/> lines.</summary>
    private static int IndexAfterLines(byte[] data, int lines)
    {
        int at = 0;
        for (int i = 0; i < lines; i++)
        {
            at = Array.IndexOf(data, (byte)'\n', at) + 1;
        }

        return at;
    }

    [Fact]
    public async Task A_corrected_mapping_goes_with_a_new_upload_id_and_commits_only_what_was_missing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length]);
        LogMapping corrected = RawLogSamples.Mapping();
        corrected.AccountHolders["lab-unknown"] = "91440300MA5G2XK3P1";

        RpcException mismatch = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length], mapping: corrected));
        Assert.Equal("UPLOAD_MISMATCH", IngestCall.Reason(mismatch));

        UploadReport report = await UploadAsync(server, "u1-fixed", "slurm-a", Sacct, chunks: [Sacct.Length], mapping: corrected);
        Assert.Equal((1ul, 5ul), (report.Records, report.LinesDuplicate));
        Assert.Equal(1L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE job_id = '4206'"));
    }

    [Fact]
    public async Task A_line_with_a_nul_byte_is_refused_and_the_upload_goes_on()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] log = [.. Encoding.UTF8.GetBytes("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State\n"),
            .. "4201|lab-vi"u8, 0, .. "sion|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"u8,
            .. "4202|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"u8];
        byte[] json = Encoding.UTF8.GetBytes("""{"job_id":"j","account":"lab-vision","device_model":"H100\u0000","device_count":1,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""" + "\n");

        UploadReport report = await UploadAsync(server, "nul", "nul", log, chunks: [log.Length]);
        UploadReport jsonReport = await UploadAsync(server, "nul-json", "nul-json", json, chunks: [json.Length], format: LogFormat.JsonLines);

        Assert.True(report.Complete);
        Assert.Equal([(2ul, "MALFORMED_LINE")], report.Errors.Select(e => (e.Line, e.Reason)));
        Assert.Equal(1ul, report.Records);
        Assert.True(jsonReport.Complete);
        Assert.Equal("UNKNOWN_DEVICE_MODEL", jsonReport.Errors.Single().Reason);
        Assert.Contains("\\0", jsonReport.Errors.Single().Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Crlf_endings_and_a_missing_final_newline_are_handled()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] crlf = Encoding.UTF8.GetBytes(RawLogSamples.Sacct.Replace("\n", "\r\n", StringComparison.Ordinal).TrimEnd('\r', '\n'));

        UploadReport report = await UploadAsync(server, "crlf", "crlf", crlf, chunks: [crlf.Length]);

        Assert.True(report.Complete);
        Assert.Equal((12ul, 5ul, 3ul), (report.Lines, report.Records, report.LinesRefused));
    }

    [Fact]
    public async Task Oversize_and_non_utf8_lines_are_reported_and_the_rest_commits()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { RawLineBytesMax = 1024 });
        byte[] log = [.. Encoding.UTF8.GetBytes("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State\n"),
            .. Encoding.UTF8.GetBytes(new string('x', 5000) + "\n"),
            .. "4201|lab-vision|gpu-"u8, 0xFF, 0xFE, .. "|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"u8,
            .. "4202|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"u8];

        UploadReport report = await UploadAsync(server, "odd", "odd", log, chunks: [700, log.Length - 700]);

        Assert.Equal([(2ul, "LINE_TOO_LONG"), (3ul, "INVALID_UTF8")], report.Errors.Select(e => (e.Line, e.Reason)));
        Assert.Equal(1ul, report.Records);
    }

    [Fact]
    public async Task Records_that_fail_ingest_validation_are_refused_per_line_with_the_ingest_reason()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] log = Encoding.UTF8.GetBytes(
            """{"job_id":"ok","account":"lab-vision","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00"}""" + "\n"
            + """{"job_id":"bad","account":"lab-vision","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T09:00:00+08:00","end":"2026-11-20T08:00:00+08:00"}""" + "\n"
            + """{"job_id":"ok2","account":"lab-vision","device_model":"B200","device_count":0,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00"}""" + "\n"
            + """{"job_id":"ok3","account":"lab-speech","gres":"a100","device_count":1,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00"}""" + "\n");

        UploadReport report = await UploadAsync(server, "json", "json", log, chunks: [log.Length], format: LogFormat.JsonLines);

        Assert.Equal([(2ul, "END_NOT_AFTER_START"), (3ul, "DEVICE_COUNT_OUT_OF_RANGE")], report.Errors.Select(e => (e.Line, e.Reason)));
        Assert.Equal(2ul, report.Records);
        Assert.Equal([1L, 2L], await server.QueryAsync<long>("SELECT sequence FROM usage_records WHERE stream_id = 'json' ORDER BY 1"));
    }

    [Fact]
    public async Task Header_offset_beyond_the_committed_offset_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "gap", "gap", Sacct[100..], chunks: [Sacct.Length - 100], offset: 100));
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("OFFSET_GAP", IngestCall.Reason(error));
        Assert.Equal("0", IngestCall.Metadata(error, "expected"));
    }

    [Fact]
    public async Task Upload_over_the_size_limit_is_refused_before_any_byte_is_read()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { RawUploadBytesMax = 100 });
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "big", "big", Sacct, chunks: [Sacct.Length]));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("UPLOAD_TOO_LARGE", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_uploads"));
    }

    [Fact]
    public async Task More_bytes_than_announced_are_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "over", "over", Sacct, chunks: [Sacct.Length], totalBytes: 50));
        Assert.Equal("UPLOAD_OVERRUN", IngestCall.Reason(error));
    }

    [Fact]
    public async Task The_same_upload_id_with_other_content_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length]);
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "u1", "slurm-a", Sacct[..500], chunks: [500]));
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("UPLOAD_MISMATCH", IngestCall.Reason(error));
    }

    [Theory]
    [InlineData("bad upload id", "HEADER_INVALID")]
    [InlineData("no format", "HEADER_INVALID")]
    [InlineData("holder not a credit code", "HEADER_INVALID")]
    [InlineData("model not in catalog", "HEADER_INVALID")]
    public async Task Invalid_headers_are_refused(string problem, string reason)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var header = Header("u1", "s1", (ulong)Sacct.Length, 0, LogFormat.SacctParsable2);
        switch (problem)
        {
            case "bad upload id": header.UploadId = "has space"; break;
            case "no format": header.Format = LogFormat.Unspecified; break;
            case "holder not a credit code": header.Mapping.AccountHolders["lab-vision"] = "123"; break;
            default: header.Mapping.GresModels["h100"] = "H100"; break;
        }

        using var call = server.RawLogClient().UploadLog(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new LogChunk { Header = header });
        RpcException error = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal(reason, IngestCall.Reason(error));
    }

    [Fact]
    public async Task A_sacct_file_without_the_required_columns_is_refused_whole()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] log = Encoding.UTF8.GetBytes("JobID|Account|Start|End\n1|a|2026-11-20T08:00:00|2026-11-20T09:00:00\n");
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(server, "nohdr", "nohdr", log, chunks: [log.Length]));
        Assert.Equal("HEADER_INVALID", IngestCall.Reason(error));
        Assert.Contains("Partition", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Unknown_upload_is_not_found_and_uploads_are_private_to_their_provider()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await UploadAsync(server, "u1", "slurm-a", Sacct, chunks: [Sacct.Length]);

        RpcException error = await Assert.ThrowsAsync<RpcException>(async () =>
            await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "u1" }, TestServer.Bearer(TestServer.OtherProviderKey)));

        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Equal("UPLOAD_NOT_FOUND", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Upload_without_a_key_is_unauthenticated()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var call = server.RawLogClient().UploadLog(new Metadata());
        // The server refuses a keyless call before it reads a message and resets the request
        // side, so the write may fail (even as CANCELLED when the reset wins); the call's status
        // is what the response side reads.
        try
        {
            await call.RequestStream.WriteAsync(new LogChunk { Header = Header("u1", "s1", 10, 0, LogFormat.SacctParsable2) });
        }
        catch (RpcException)
        {
        }

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
    }

    private const string StepsHeader = "JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State\n";

    // sacct --parsable2 of three sbatch jobs: 5101 and 5103 never call srun, 5102 runs one step.
    private static readonly byte[] BatchJobs = Encoding.UTF8.GetBytes(StepsHeader
        + "5101|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5101.batch|lab-vision||cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5101.extern|lab-vision||billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5102|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5102.batch|lab-vision||cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5102.extern|lab-vision||billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5102.0|lab-vision||cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:05:00|2026-11-20T08:55:00|00:50:00|COMPLETED\n"
        + "5103|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "5103.batch|lab-vision||cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n");

    [Fact]
    public async Task With_steps_metered_batch_jobs_without_steps_are_metered_once_and_held_lines_survive_an_interruption()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        LogMapping steps = RawLogSamples.Mapping();
        steps.MeterSteps = true;

        UploadReport whole = await UploadAsync(server, "whole", "steps-whole", BatchJobs, chunks: [BatchJobs.Length], mapping: steps);
        Assert.True(whole.Complete);
        Assert.Equal((10ul, 3ul, 7ul, 0ul), (whole.Lines, whole.Records, whole.LinesSkipped, whole.LinesRefused));
        Assert.Equal(["5101.batch", "5102.0", "5103.batch"], await server.QueryAsync<string>("SELECT job_id FROM usage_records WHERE stream_id = 'steps-whole' ORDER BY sequence"));

        // Interrupted just after 5101.extern, while 5101.batch waits to learn whether 5101 has steps,
        // and again just before the last line: neither held line may be lost or counted twice.
        string text = Encoding.UTF8.GetString(BatchJobs);
        int heldAt = text.IndexOf("5101.batch", StringComparison.Ordinal);
        int firstStop = text.IndexOf("5102|", StringComparison.Ordinal);
        UploadReport partial = await UploadAsync(server, "u1", "steps-resumed", BatchJobs, chunks: [firstStop], complete: false, totalBytes: (ulong)BatchJobs.Length, mapping: steps);
        Assert.False(partial.Complete);
        Assert.Equal((ulong)heldAt, partial.CommittedOffset);
        Assert.Equal((2ul, 0ul), (partial.Lines, partial.Records));

        int secondStop = text.IndexOf("5103.batch", StringComparison.Ordinal) + 3;
        UploadReport second = await UploadAsync(server, "u1", "steps-resumed", BatchJobs[heldAt..], chunks: [secondStop - heldAt], offset: (ulong)heldAt, complete: false, totalBytes: (ulong)BatchJobs.Length, mapping: steps);
        Assert.False(second.Complete);
        UploadReport last = await UploadAsync(server, "u1", "steps-resumed", BatchJobs[(int)second.CommittedOffset..], chunks: [BatchJobs.Length - (int)second.CommittedOffset], offset: second.CommittedOffset, mapping: steps);

        Assert.True(last.Complete);
        Assert.Equal((whole.Lines, whole.Records, whole.LinesSkipped, whole.LinesRefused), (last.Lines, last.Records, last.LinesSkipped, last.LinesRefused));
        Assert.Equal(await ContentAsync(server, "steps-whole"), await ContentAsync(server, "steps-resumed"));
    }

    [Fact]
    public async Task A_job_holding_two_gpu_types_commits_a_record_per_type_once_across_re_uploads()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] file = Encoding.UTF8.GetBytes(StepsHeader
            + "5201|lab-vision|gpu-mixed|billing=2,cpu=2,gres/gpu:a100=1,gres/gpu:h100=1,gres/gpu=2,mem=4G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n");

        UploadReport first = await UploadAsync(server, "u1", "mixed", file, chunks: [file.Length]);
        UploadReport again = await UploadAsync(server, "u2", "mixed", file, chunks: [file.Length]);

        Assert.Equal((2ul, 2ul, 0ul), (first.Lines, first.Records, first.LinesRefused));
        Assert.Equal((0ul, 2ul), (again.Records, again.LinesDuplicate));
        var rows = await server.QueryAsync<string>("SELECT job_id || ' ' || device_model FROM usage_records WHERE stream_id = 'mixed' ORDER BY sequence");
        Assert.Equal(["5201/gpu:a100 A100-SXM", "5201/gpu:h100 H100-SXM"], rows);
    }

    internal static UploadHeader Header(string uploadId, string streamId, ulong totalBytes, ulong offset, LogFormat format, LogMapping? mapping = null) => new()
    {
        UploadId = uploadId,
        StreamId = streamId,
        Format = format,
        Mapping = mapping ?? RawLogSamples.Mapping(),
        TotalBytes = totalBytes,
        Offset = offset,
    };

    /// <summary>Sends <paramref name="data"/> (the file from <paramref name="offset"/> on) in chunks of the given sizes.</summary>
    internal static async Task<UploadReport> UploadAsync(TestServer server, string uploadId, string streamId, byte[] data, int[] chunks,
        ulong offset = 0, bool complete = true, LogFormat format = LogFormat.SacctParsable2, ulong? totalBytes = null, LogMapping? mapping = null)
    {
        ulong total = totalBytes ?? (complete ? offset + (ulong)data.Length : (ulong)Sacct.Length);
        using var call = server.RawLogClient().UploadLog(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new LogChunk { Header = Header(uploadId, streamId, total, offset, format, mapping) });
        int at = 0;
        try
        {
            foreach (int length in chunks)
            {
                await call.RequestStream.WriteAsync(new LogChunk { Data = ByteString.CopyFrom(data, at, length) });
                at += length;
            }

            await call.RequestStream.CompleteAsync();
        }
        catch (RpcException)
        {
            // The server answered early (a refusal); the answer says why.
        }

        return await call.ResponseAsync;
    }

    /// <summary>A stream's records without the stream id, so that streams fed by different uploads compare.</summary>
    private static async Task<string> ContentAsync(TestServer server, string streamId)
    {
        await using var connection = new NpgsqlConnection(server.ConnectionString);
        var rows = await connection.QueryAsync<string>("""
            SELECT concat_ws('|', sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, start_at, end_at, site, usage_npfh)
            FROM usage_records WHERE stream_id = @streamId ORDER BY sequence
            """, new { streamId });
        return string.Join('\n', rows);
    }
}
