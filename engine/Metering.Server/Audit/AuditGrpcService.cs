using System.Globalization;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Identity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Microsoft.Extensions.Logging;
using EngineAnomaly = Metering.Engine.Audit.Anomaly;
using EngineAnomalyKind = Metering.Engine.Audit.AnomalyKind;
using EngineChainBreak = Metering.Engine.Audit.ChainBreak;
using EngineEvidenceRow = Metering.Engine.Audit.EvidenceRow;
using EngineExportFormat = Metering.Engine.Audit.ExportFormat;
using EngineProof = Metering.Engine.Audit.InclusionProof;
using EngineUsageTotals = Metering.Engine.Audit.UsageTotals;

namespace Metering.Server.Audit;

/// <summary>
/// The audit service over gRPC. The access policy has checked the caller's role; this service
/// keeps providers to their own chains, roots and proofs, writes every call to the audit query
/// log before running it, and never writes anything else.
/// </summary>
internal sealed partial class AuditGrpcService(
    AuditedProvider auditedProvider, ChainVerifier verifier, DailyMerkle merkle, UsageQueries queries, UsageExport export, AnomalyDetectors detectors, HtmlReport reports,
    AuditQueryLog queryLog, ServerSigningKey signingKey, UsageStore usageStore, CallLimiter limiter, KeyLookupCache credentials, ILogger<AuditGrpcService> logger)
    : AuditService.AuditServiceBase
{
    /// <summary>
    /// Most sequences one GetChainHashes call reads; bounds the query and the logged request alike.
    /// 256 sequences of up to 10 bytes each keep a request under <see cref="RequestBytesMax"/>.
    /// </summary>
    public const int ChainHashSequencesMax = 256;

    /// <summary>
    /// The largest audit request taken, in protobuf bytes. Every field of an audit request is a
    /// code, an id, a time or a number, so a real one is a few hundred bytes; a larger one is
    /// refused with AUDIT_ARGUMENT_INVALID before it is logged, which bounds the log's entries
    /// (<see cref="AuditQueryLog.ParametersCharsMax"/>).
    /// </summary>
    public const int RequestBytesMax = 4 * 1024;

    /// <summary>The largest message the server sends; a report past it is refused with AUDIT_LIMIT_EXCEEDED.</summary>
    public const int ResponseBytesMax = 16 * 1024 * 1024;

    /// <summary>Bytes of file per export chunk, well under a client's default 4 MiB receive limit.</summary>
    public const int ExportChunkBytes = 1024 * 1024;

    public override Task<VerifyChainResponse> VerifyChain(VerifyChainRequest request, ServerCallContext context) =>
        Run(context, "VerifyChain", request, request.CreditCode, async (actor, ct) =>
        {
            await auditedProvider.RequireKnownAsync(request.CreditCode, ct);
            var range = new VerificationRange(Math.Max(request.FromSequence, 1), request.ToSequence == 0 ? null : request.ToSequence);
            IReadOnlyList<ChainVerification> results = request.StreamId.Length == 0
                ? await verifier.VerifyProviderAsync(request.CreditCode, range, ct)
                : [await verifier.VerifyStreamAsync(request.CreditCode, request.StreamId, range, null, ct)];
            await RequireKeyStillValidAsync(context);
            return new VerifyChainResponse { Streams = { results.Select(ToMessage) } };
        });

    public override Task<MerkleRoot> GetMerkleRoot(GetMerkleRootRequest request, ServerCallContext context) =>
        Run(context, "GetMerkleRoot", request, request.CreditCode, async (actor, ct) =>
        {
            RequireCode(request.CreditCode);
            DailyRoot root = await merkle.RootAsync(request.CreditCode, Day(request.Day, "day"), CutOff(request.AsOfUnixMs, request.Settled), ct);
            return new MerkleRoot
            {
                CreditCode = root.ProviderId,
                Day = request.Day,
                AsOfUnixMs = request.AsOfUnixMs,
                LeafCount = (uint)root.LeafCount,
                Root = ByteString.CopyFrom(root.Root),
                Settled = root.CutOff.IsSettled,
            };
        });

    public override Task<Protocol.V1.InclusionProof> GetInclusionProof(GetInclusionProofRequest request, ServerCallContext context) =>
        Run(context, "GetInclusionProof", request, request.CreditCode, async (actor, ct) =>
        {
            RequireCode(request.CreditCode);
            if (request.StreamId.Length == 0 || request.Sequence == 0)
            {
                throw new ArgumentException("stream_id and sequence name the record to prove; both are required");
            }

            EngineProof proof = await merkle.ProveAsync(request.CreditCode, request.StreamId, request.Sequence, CutOff(request.AsOfUnixMs, request.Settled), ct);
            return new Protocol.V1.InclusionProof
            {
                CreditCode = proof.ProviderId,
                Day = proof.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                AsOfUnixMs = request.AsOfUnixMs,
                StreamId = proof.StreamId,
                Sequence = proof.Sequence,
                LeafIndex = (uint)proof.LeafIndex,
                LeafCount = (uint)proof.LeafCount,
                PreviousHash = ByteString.CopyFrom(proof.PreviousHash),
                Canonical = ByteString.CopyFrom(proof.Canonical),
                ChainHash = ByteString.CopyFrom(proof.ChainHash),
                LeafHash = ByteString.CopyFrom(proof.LeafHash),
                Steps =
                {
                    proof.Steps.Select(s => new Protocol.V1.ProofStep
                    {
                        Side = s.Side == Engine.Audit.ProofSide.Left ? Protocol.V1.ProofSide.Left : Protocol.V1.ProofSide.Right,
                        Sibling = ByteString.CopyFrom(s.Sibling),
                    }),
                },
                Root = ByteString.CopyFrom(proof.Root),
                Settled = proof.CutOff.IsSettled,
            };
        });

    public override Task<QueryUsageResponse> QueryUsage(QueryUsageRequest request, ServerCallContext context) =>
        Run(context, "QueryUsage", request, NullIfEmpty(request.Selection?.CreditCode), async (actor, ct) =>
        {
            if (NullIfEmpty(request.Selection?.CreditCode) is { } code)
            {
                await auditedProvider.RequireKnownAsync(code, ct);
            }

            UsageSummary summary = await queries.SummariseAsync(Filter(request.Selection), Grouping(request.GroupBy), (int)Math.Min(request.GroupsLimit, int.MaxValue), ct);
            return new QueryUsageResponse { Groups = { summary.Groups.Select(ToMessage) }, Total = ToMessage(summary.Total), Truncated = summary.Truncated };
        });

    public override async Task ExportUsage(ExportUsageRequest request, IServerStreamWriter<ExportChunk> responseStream, ServerCallContext context)
    {
        await Run(context, "ExportUsage", request, NullIfEmpty(request.Selection?.CreditCode), async (actor, ct) =>
        {
            // A mistyped but well-formed code is NOT_FOUND, as for the other queries, not an empty file.
            if (NullIfEmpty(request.Selection?.CreditCode) is { } code)
            {
                await auditedProvider.RequireKnownAsync(code, ct);
            }

            UsageFilter filter = Filter(request.Selection);
            EngineExportFormat format = request.Format switch
            {
                Protocol.V1.ExportFormat.Csv => EngineExportFormat.Csv,
                Protocol.V1.ExportFormat.Parquet => EngineExportFormat.Parquet,
                _ => throw new ArgumentException("format must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_PARQUET"),
            };

            // Parquet writes its footer with seeks, so the file is built in a temporary file and
            // then streamed; CSV goes the same way to keep one path.
            string path = Path.GetTempFileName();
            try
            {
                long records;
                await using (var file = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, 64 * 1024, FileOptions.DeleteOnClose))
                {
                    records = await export.WriteAsync(filter, format, file, ct);
                    await RequireKeyStillValidAsync(context);
                    file.Position = 0;
                    var buffer = new byte[ExportChunkBytes];
                    int read;
                    while ((read = await file.ReadAsync(buffer, ct)) > 0)
                    {
                        await responseStream.WriteAsync(new ExportChunk { Data = ByteString.CopyFrom(buffer, 0, read) }, ct);
                    }
                }

                await responseStream.WriteAsync(new ExportChunk { Records = (ulong)records }, ct);
            }
            finally
            {
                File.Delete(path);
            }

            return true;
        });
    }

    public override Task<DetectAnomaliesResponse> DetectAnomalies(DetectAnomaliesRequest request, ServerCallContext context) =>
        Run(context, "DetectAnomalies", request, request.CreditCode, async (actor, ct) =>
        {
            await auditedProvider.RequireKnownAsync(request.CreditCode, ct);
            // Silence 0 means the operator's threshold (setting Anomalies:Silence); the other thresholds are always the operator's.
            DetectorSettings settings = request.SilenceMinutes == 0 ? detectors.Settings : detectors.Settings with { Silence = TimeSpan.FromMinutes(request.SilenceMinutes) };
            DateTimeOffset from = Instant(request.FromUnixMs, "from_unix_ms");
            DateTimeOffset until = Instant(request.UntilUnixMs, "until_unix_ms");
            HashSet<EngineAnomalyKind> kinds = request.Kinds.Select(EngineKind).ToHashSet();
            AnomalyFindings findings = await detectors.With(settings).FindAsync(request.CreditCode, from, until, kinds, ct);
            UsageSummary examined = await queries.SummariseAsync(new UsageFilter { ProviderId = request.CreditCode, From = from, Until = until }, UsageGrouping.None, 0, ct);
            return new DetectAnomaliesResponse
            {
                Kinds = { findings.Kinds.Select(k => new Protocol.V1.AnomalyKindCount { Kind = WireKind(k.Kind), Found = (ulong)k.Found, Shown = (uint)k.Kept, Truncated = k.Truncated }) },
                Anomalies = { findings.Anomalies.Select(ToMessage) },
                RecordsExamined = (ulong)examined.Total.Records,
                AnomaliesPerKindMax = (uint)findings.AnomaliesPerKindMax,
            };
        });

    public override Task<AuditReport> RenderReport(RenderReportRequest request, ServerCallContext context) =>
        Run(context, "RenderReport", request, request.CreditCode, async (actor, ct) =>
        {
            await auditedProvider.RequireKnownAsync(request.CreditCode, ct);
            RenderedReport report = await reports.RenderAsync(request.CreditCode, Day(request.FromDay, "from_day"), Day(request.ToDay, "to_day"), ct);
            ByteString html = ByteString.CopyFromUtf8(report.Html);
            if (html.Length > ResponseBytesMax - 1024)
            {
                throw new AuditLimitExceededException($"the report is {html.Length:N0} bytes, more than one response carries; render a shorter period");
            }

            return new AuditReport { Html = html, Anomalies = (uint)report.Anomalies, Total = ToMessage(report.Total), StreamsBroken = (uint)report.StreamsBroken };
        });

    public override Task<ListAuditQueriesResponse> ListAuditQueries(ListAuditQueriesRequest request, ServerCallContext context) =>
        Run(context, "ListAuditQueries", request, null, async (actor, ct) =>
        {
            IReadOnlyList<AuditQueryEntry> entries = await queryLog.ListAsync(NullIfEmpty(request.Actor), (int)Math.Min(request.Limit, int.MaxValue), ct);
            return new ListAuditQueriesResponse
            {
                Queries =
                {
                    entries.Select(e => new AuditQuery
                    {
                        QueryId = e.QueryId,
                        Actor = e.Actor,
                        Role = e.Role,
                        Via = e.Via,
                        AskedAtUnixMs = e.AskedAt.ToUnixTimeMilliseconds(),
                        Query = e.Query,
                        CreditCode = e.ProviderId ?? "",
                        ParametersJson = e.Parameters,
                    }),
                },
            };
        });

    // The public key concerns no provider; a provider's call is logged under its own code, which
    // is what lets it past the confinement to its own data.
    public override Task<SigningKey> GetSigningKey(GetSigningKeyRequest request, ServerCallContext context) =>
        Run(context, "GetSigningKey", request, AuthenticationInterceptor.Caller(context) is { Role: Role.Provider } provider ? provider.Subject : null,
            (actor, ct) => Task.FromResult(new SigningKey { KeyId = signingKey.KeyId, PublicKeyPem = signingKey.PublicKey.Pem }));

    public override Task<GetChainHashesResponse> GetChainHashes(GetChainHashesRequest request, ServerCallContext context)
    {
        // Checked before the query is logged, so that an oversize request never reaches the log.
        if (request.Sequences.Count > ChainHashSequencesMax)
        {
            throw Errors.Refused(StatusCode.ResourceExhausted, ProtocolNames.Of(AuditRefusal.AuditLimitExceeded),
                $"at most {ChainHashSequencesMax} sequences per call; {request.Sequences.Count} were asked for");
        }

        return Run(context, "GetChainHashes", request, request.CreditCode, async (actor, ct) =>
        {
            RequireCode(request.CreditCode);
            if (request.StreamId.Length == 0 || request.Sequences.Count == 0 || request.Sequences.Contains(0UL))
            {
                throw new ArgumentException("stream_id and at least one sequence (each 1 or more) are required");
            }

            ulong[] sequences = request.Sequences.Distinct().Order().ToArray();
            Dictionary<ulong, List<byte[]>> stored = await usageStore.ReadChainHashesAtAsync(request.CreditCode, request.StreamId, sequences, ct);
            StreamHead head = await usageStore.ReadStreamHeadAsync(request.CreditCode, request.StreamId, ct);
            return new GetChainHashesResponse
            {
                CommittedSequence = head.CommittedSequence,
                ChainHead = ByteString.CopyFrom(head.ChainHash),
                Hashes =
                {
                    sequences.Select(sequence => stored.TryGetValue(sequence, out List<byte[]>? hashes)
                        ? new StoredChainHash { Sequence = sequence, Stored = true, ChainHash = ByteString.CopyFrom(hashes[0]), Duplicated = hashes.Count > 1 }
                        : new StoredChainHash { Sequence = sequence }),
                },
            };
        });
    }

    private static StreamVerification ToMessage(ChainVerification v) => new()
    {
        StreamId = v.StreamId,
        FromSequence = v.FromSequence,
        ToSequence = v.ToSequence,
        CommittedSequence = v.CommittedSequence,
        RecordsChecked = v.RecordsChecked,
        CanonicalBytes = (ulong)v.CanonicalBytes,
        Intact = v.Intact,
        ComputedHead = ByteString.CopyFrom(v.ComputedHead),
        Break = v.Break is { } b ? ToMessage(b) : null,
    };

    private static Protocol.V1.ChainBreak ToMessage(EngineChainBreak b) => new()
    {
        Sequence = b.Sequence,
        Kind = b.Kind switch
        {
            Engine.Audit.ChainBreakKind.HashMismatch => Protocol.V1.ChainBreakKind.HashMismatch,
            Engine.Audit.ChainBreakKind.RecordMissing => Protocol.V1.ChainBreakKind.RecordMissing,
            Engine.Audit.ChainBreakKind.RecordDuplicated => Protocol.V1.ChainBreakKind.RecordDuplicated,
            Engine.Audit.ChainBreakKind.RecordNotEncodable => Protocol.V1.ChainBreakKind.RecordNotEncodable,
            Engine.Audit.ChainBreakKind.HeadMismatch => Protocol.V1.ChainBreakKind.HeadMismatch,
            _ => Protocol.V1.ChainBreakKind.RecordBeyondHead,
        },
        PreviousHashHex = b.PreviousHashHex,
        StoredHashHex = b.StoredHashHex,
        ComputedHashHex = b.ComputedHashHex,
        CanonicalHex = b.CanonicalHex,
        Detail = b.Detail,
    };

    private static Protocol.V1.UsageTotals ToMessage(EngineUsageTotals t) => new()
    {
        Key = t.Key,
        Records = (ulong)t.Records,
        DeviceMs = (ulong)t.DeviceMs,
        UsageNpfh = (ulong)t.UsageNanoPflopsHours,
        DeviceHours = t.DeviceHours,
        PflopsHours = t.PflopsHours,
    };

    /// <summary>The engine's kinds and the wire's, one to one.</summary>
    private static readonly (EngineAnomalyKind Engine, Protocol.V1.AnomalyKind Wire)[] Kinds =
    [
        (EngineAnomalyKind.CapacityExceeded, Protocol.V1.AnomalyKind.AnomalyCapacityExceeded),
        (EngineAnomalyKind.DeviceDoubleBooked, Protocol.V1.AnomalyKind.AnomalyDeviceDoubleBooked),
        (EngineAnomalyKind.OutsideAdmission, Protocol.V1.AnomalyKind.AnomalyOutsideAdmission),
        (EngineAnomalyKind.TamperConflict, Protocol.V1.AnomalyKind.AnomalyTamperConflict),
        (EngineAnomalyKind.ChainBroken, Protocol.V1.AnomalyKind.AnomalyChainBroken),
        (EngineAnomalyKind.SilentStream, Protocol.V1.AnomalyKind.AnomalySilentStream),
        (EngineAnomalyKind.UsageSpike, Protocol.V1.AnomalyKind.AnomalyUsageSpike),
        (EngineAnomalyKind.CapacityUnvalidated, Protocol.V1.AnomalyKind.AnomalyCapacityUnvalidated),
        (EngineAnomalyKind.AllocatedIdle, Protocol.V1.AnomalyKind.AnomalyAllocatedIdle),
    ];

    private static Protocol.V1.AnomalyKind WireKind(EngineAnomalyKind kind) =>
        Kinds.FirstOrDefault(k => k.Engine == kind) is { Wire: not Protocol.V1.AnomalyKind.Unspecified } found
            ? found.Wire
            : throw new InvalidOperationException($"Anomaly kind {kind} has no name in the wire contract; add it to audit.proto.");

    /// <summary>The engine's kind of a requested one; anything else (unspecified, or a number no kind has) is refused by name.</summary>
    private static EngineAnomalyKind EngineKind(Protocol.V1.AnomalyKind kind) =>
        Kinds.FirstOrDefault(k => k.Wire == kind) is { Wire: not Protocol.V1.AnomalyKind.Unspecified } found
            ? found.Engine
            : throw new AnomalyKindUnknownException(
                $"kinds holds {AnomalyKinds.FindValueByNumber((int)kind)?.Name ?? ((int)kind).ToString(CultureInfo.InvariantCulture)}, which is not an anomaly kind; the kinds are {string.Join(", ", Kinds.Select(k => AnomalyKinds.FindValueByNumber((int)k.Wire).Name))}");

    private static readonly Google.Protobuf.Reflection.EnumDescriptor AnomalyKinds = AuditReflection.Descriptor.FindTypeByName<Google.Protobuf.Reflection.EnumDescriptor>("AnomalyKind");

    /// <summary>A requested anomaly kind that is not one: refused with its own reason, before the query is logged.</summary>
    private sealed class AnomalyKindUnknownException(string message) : ArgumentException(message);

    private static Protocol.V1.Anomaly ToMessage(EngineAnomaly a) => new()
    {
        Kind = WireKind(a.Kind),
        StreamId = a.StreamId ?? "",
        FromUnixMs = a.FromUnixMs,
        UntilUnixMs = a.UntilUnixMs,
        Summary = a.Summary,
        EvidenceTotal = (uint)a.EvidenceTotal,
        Evidence = { a.Evidence.Select(Evidence) },
        Facts = { a.Facts.Select(f => new AnomalyFact { Name = f.Name, Value = f.Value }) },
    };

    /// <summary>An evidence row on the wire; an SM activity the record did not report stays unset.</summary>
    private static EvidenceRecord Evidence(EngineEvidenceRow r)
    {
        var row = new EvidenceRecord
        {
            StreamId = r.StreamId,
            Sequence = r.Sequence,
            JobId = r.JobId,
            HolderCode = r.HolderCode,
            DeviceModel = r.DeviceModel,
            DeviceCount = r.DeviceCount,
            ShareNumerator = r.ShareNumerator,
            ShareDenominator = r.ShareDenominator,
            StartUnixMs = r.StartUnixMs,
            EndUnixMs = r.EndUnixMs,
            Site = r.Site,
            DeviceUuids = { r.DeviceUuids },
            UsageNpfh = (ulong)r.UsageNanoPflopsHours,
        };
        if (r.SmActiveBp is uint smActiveBp)
        {
            row.SmActiveBp = smActiveBp;
        }

        return row;
    }

    private static UsageFilter Filter(UsageSelection? selection)
    {
        if (selection is null || selection.FromUnixMs == 0 || selection.UntilUnixMs == 0)
        {
            throw new ArgumentException("selection.from_unix_ms and selection.until_unix_ms are required");
        }

        return new UsageFilter
        {
            ProviderId = NullIfEmpty(selection.CreditCode),
            HolderCode = NullIfEmpty(selection.HolderCode),
            JobId = NullIfEmpty(selection.JobId),
            DeviceModel = NullIfEmpty(selection.DeviceModel),
            Site = NullIfEmpty(selection.Site),
            StreamId = NullIfEmpty(selection.StreamId),
            From = Instant(selection.FromUnixMs, "from_unix_ms"),
            Until = Instant(selection.UntilUnixMs, "until_unix_ms"),
            IncludeProofStreams = selection.IncludeProofStreams,
        };
    }

    private static UsageGrouping Grouping(UsageGroupBy groupBy) => groupBy switch
    {
        UsageGroupBy.GroupByNone => UsageGrouping.None,
        UsageGroupBy.GroupByProvider => UsageGrouping.Provider,
        UsageGroupBy.GroupByHolder => UsageGrouping.Holder,
        UsageGroupBy.GroupByJob => UsageGrouping.Job,
        UsageGroupBy.GroupByDeviceModel => UsageGrouping.DeviceModel,
        UsageGroupBy.GroupBySite => UsageGrouping.Site,
        UsageGroupBy.GroupByStream => UsageGrouping.Stream,
        UsageGroupBy.GroupByDay => UsageGrouping.Day,
        _ => throw new ArgumentException($"group_by {groupBy} is not known"),
    };

    private static DateTimeOffset Instant(long unixMs, string field) =>
        unixMs is > 0 and < 253_402_300_800_000 ? DateTimeOffset.FromUnixTimeMilliseconds(unixMs) : throw new ArgumentException($"{field} must be a Unix millisecond time after 1970");

    private static MerkleCutOff CutOff(long asOfUnixMs, bool settled) => (asOfUnixMs, settled) switch
    {
        (0, false) => MerkleCutOff.None,
        (0, true) => MerkleCutOff.AsSettled,
        (_, false) => MerkleCutOff.AsOf(Instant(asOfUnixMs, "as_of_unix_ms")),
        _ => throw new ArgumentException("settled and as_of_unix_ms are two different cut-offs; give at most one"),
    };

    private static DateOnly Day(string text, string field) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day) ? day : throw new ArgumentException($"{field} must be a date yyyy-MM-dd, not '{text}'");

    private static string? NullIfEmpty(string? text) => string.IsNullOrEmpty(text) ? null : text;

    private static void RequireCode(string creditCode)
    {
        if (creditCode.Length == 0)
        {
            throw new ArgumentException("credit_code names the provider and is required");
        }

        RequireWellFormed(creditCode, "credit_code");
    }

    private static void RequireSelectionCodes(UsageSelection selection)
    {
        if (selection.CreditCode.Length > 0)
        {
            RequireWellFormed(selection.CreditCode, "selection.credit_code");
        }

        if (selection.HolderCode.Length > 0)
        {
            RequireWellFormed(selection.HolderCode, "selection.holder_code");
        }
    }

    /// <summary>
    /// A malformed code names nobody; refusing it says so, where running the query would answer
    /// with nothing found. Only the length shows in the message: the text itself may be anything.
    /// </summary>
    private static void RequireWellFormed(string code, string field)
    {
        if (!CreditCode.IsValid(code))
        {
            throw new ArgumentException($"{field} is not a unified social credit code: 18 characters of [0-9A-HJ-NP-RTUW-Y] ending in the GB 32100-2015 check character ({code.Length} characters given)");
        }
    }

    /// <summary>
    /// Keeps a provider to its own data, logs the query, and runs it. RefusalInterceptor turns the
    /// engine's refusals into the contract's; an ArgumentException is a refusal only here, where
    /// every argument comes from the caller, so this method turns it into AUDIT_ARGUMENT_INVALID.
    /// </summary>
    private async Task<T> Run<T>(ServerCallContext context, string query, IMessage request, string? providerId, Func<Actor, CancellationToken, Task<T>> call)
    {
        Actor actor = AuthenticationInterceptor.Caller(context);
        if (actor.Role == Role.Provider && providerId != actor.Subject)
        {
            // An empty code means every provider to an auditor, so a provider must name itself.
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, providerId is null
                ? $"a provider audits only its own data and must name its own credit code; {actor.Subject} named none, which means every provider"
                : $"a provider audits only its own data; {actor.Subject} named '{providerId}'");
        }

        try
        {
            Validate(request);
        }
        catch (ArgumentException error)
        {
            // Refused before the log: a request that is not one keeps nothing of itself.
            string reason = ProtocolNames.Of(error is AnomalyKindUnknownException ? AuditRefusal.AuditAnomalyKindUnknown : AuditRefusal.AuditArgumentInvalid);
            LogRefused(logger, query, actor.ToString(), reason, error.Message);
            throw Errors.Refused(StatusCode.InvalidArgument, reason, error.Message);
        }

        using IDisposable inFlight = limiter.AdmitAuditCall(actor.Subject);
        await queryLog.RecordJsonAsync(actor, AuditChannel.Grpc, query, providerId, JsonFormatter.Default.Format(request), context.CancellationToken);
        LogQuery(logger, query, actor.ToString(), providerId ?? "all providers");
        try
        {
            return await call(actor, context.CancellationToken);
        }
        catch (ArgumentException error)
        {
            string reason = ProtocolNames.Of(AuditRefusal.AuditArgumentInvalid);
            LogRefused(logger, query, actor.ToString(), reason, error.Message);
            throw Errors.Refused(StatusCode.InvalidArgument, reason, error.Message);
        }
    }

    /// <summary>
    /// The checks a request passes before it is logged: its size, and the fields each call
    /// requires in the form it requires them. The calls check the rest as they run.
    /// </summary>
    private static void Validate(IMessage request)
    {
        int size = request.CalculateSize();
        if (size > RequestBytesMax)
        {
            throw new ArgumentException($"the request is {size:N0} bytes; an audit request is at most {RequestBytesMax:N0}");
        }

        switch (request)
        {
            case VerifyChainRequest r:
                RequireCode(r.CreditCode);
                RequireStreamId(r.StreamId, required: false);
                break;
            case GetMerkleRootRequest r:
                RequireCode(r.CreditCode);
                Day(r.Day, "day");
                break;
            case GetInclusionProofRequest r:
                RequireCode(r.CreditCode);
                RequireStreamId(r.StreamId, required: true);
                break;
            case QueryUsageRequest r:
                Filter(r.Selection);
                RequireSelectionCodes(r.Selection);
                break;
            case ExportUsageRequest r:
                Filter(r.Selection);
                RequireSelectionCodes(r.Selection);
                break;
            case DetectAnomaliesRequest r:
                RequireCode(r.CreditCode);
                foreach (Protocol.V1.AnomalyKind kind in r.Kinds)
                {
                    // Throws for a value that is no kind, so that it is refused before the log.
                    EngineKind(kind);
                }
                break;
            case RenderReportRequest r:
                RequireCode(r.CreditCode);
                Day(r.FromDay, "from_day");
                Day(r.ToDay, "to_day");
                break;
            case GetChainHashesRequest r:
                RequireCode(r.CreditCode);
                RequireStreamId(r.StreamId, required: true);
                break;
        }
    }

    private static void RequireStreamId(string streamId, bool required)
    {
        if ((required || streamId.Length > 0) && !Ingest.IngestGrpcService.IsValidStreamId(streamId))
        {
            throw new ArgumentException($"stream_id must be 1 to {CanonicalEncoding.StreamIdBytesMax} characters from [A-Za-z0-9._:-]");
        }
    }

    /// <summary>
    /// Calls that stream results, or hand back a long computation, look the caller's key up again
    /// first: a key revoked while the work ran gets nothing.
    /// </summary>
    private async Task RequireKeyStillValidAsync(ServerCallContext context)
    {
        if (await credentials.AuthenticateAsync(AuthenticationInterceptor.KeyOf(context), context.CancellationToken) is null)
        {
            throw CallerRefusals.Refused(CallerRefusal.Unauthenticated, "the API key was revoked while the audit call ran; no results were sent");
        }
    }

    [LoggerMessage(EventId = 6001, Level = LogLevel.Information, Message = "Audit {Query} by {Actor} about {Provider}")]
    private static partial void LogQuery(ILogger logger, string query, string actor, string provider);

    [LoggerMessage(EventId = 6002, Level = LogLevel.Information, Message = "Audit {Query} by {Actor} refused: {Reason}: {Detail}")]
    private static partial void LogRefused(ILogger logger, string query, string actor, string reason, string detail);
}
