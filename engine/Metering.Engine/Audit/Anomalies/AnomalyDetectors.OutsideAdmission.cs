using Metering.Engine.Ingest;
using Metering.Engine.Registry;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>
    /// Rule: every record that started in the period must lie wholly inside one of the
    /// provider's admissions and overlap none of its suspensions, as the registry stands now (the
    /// same check as the ingest gate, <see cref="AdmissionSnapshot.Check"/>). Ingest enforces it
    /// when a record arrives; records that break it later come from a retroactive suspension, an
    /// exit dated back, or rows written around ingest. Consecutive records of a stream refused
    /// for the same reason make one anomaly.
    /// </summary>
    private IEnumerable<Anomaly> OutsideAdmission(string providerId, List<Usage> records, long fromMs, AdmissionSnapshot snapshot)
    {
        (Usage First, Refusal Refusal, List<Usage> Records)? run = null;
        Anomaly Close((Usage First, Refusal Refusal, List<Usage> Records) r) =>
            new(AnomalyKind.OutsideAdmission, providerId, r.First.StreamId, r.Records.Min(x => x.StartMs), r.Records.Max(x => x.EndMs),
                r.Records.Count == 1 ? r.Refusal.Message : $"{r.Refusal.Message} (and {r.Records.Count - 1} more records of {r.First.StreamId})",
                r.Records.Take(_settings.EvidenceRowsMax).Select(x => x.Evidence()).ToList(), r.Records.Count,
                [new("reason", r.Refusal.Reason.ContractName())]);

        foreach (Usage record in records)
        {
            if (record.StartMs < fromMs)
            {
                continue;
            }

            Refusal refusal = snapshot.Check(record.Sequence, record.StartMs, record.EndMs);
            bool refused = refusal.Reason != default;
            if (run is { } current && (!refused || current.First.StreamId != record.StreamId || current.Refusal.Reason != refusal.Reason))
            {
                yield return Close(current);
                run = null;
            }

            if (refused)
            {
                if (run is null)
                {
                    run = (record, refusal, []);
                }

                run.Value.Records.Add(record);
            }
        }

        if (run is { } last)
        {
            yield return Close(last);
        }
    }
}
