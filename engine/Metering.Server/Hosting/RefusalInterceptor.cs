using Google.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Metering.Server.Access;
using Metering.Server.Vouchers;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Hosting;

/// <summary>
/// Turns the engine's refusals into the contract's statuses for every service, in one place: a
/// handler throws the feature's refused exception, and this interceptor logs it once and throws
/// the RpcException that <see cref="Errors"/> builds for it (status, ErrorInfo reason and
/// metadata, Chinese LocalizedMessage). Anything else passes through untouched, so a refusal a
/// handler built itself keeps its status and a fault stays a fault, except the database going
/// away (connection refused, a failover, an administrator's shutdown), which every service answers
/// with UNAVAILABLE and reason DATABASE_UNAVAILABLE rather than UNKNOWN. It runs inside
/// <see cref="AuthenticationInterceptor"/>, so the caller it logs is the authenticated one.
/// </summary>
internal sealed partial class RefusalInterceptor(ILogger<RefusalInterceptor> logger) : Interceptor
{
    /// <summary>The call's refusal as the contract puts it, or null when the exception is no engine refusal.</summary>
    public static RpcException? StatusOf(Exception error) => error switch
    {
        IngestRefusedException refused => Errors.From(refused),
        RegistryRefusedException refused => Errors.From(refused),
        ReconsiderationRefusedException refused => Errors.From(refused),
        CapacityRefusedException refused => Errors.From(refused),
        CredentialRefusedException refused => Errors.From(refused),
        TransparencyLogException refused => Errors.From(refused),
        VoucherRefusedException refused => VoucherErrors.From(refused),
        PayoutRefusedException refused => VoucherErrors.From(refused),
        SettlementRefusedException refused => VoucherErrors.From(refused),
        RecordNotFoundException refused => Errors.From(refused),
        DayNotSettledException refused => Errors.From(refused),
        AuditLimitExceededException refused => Errors.From(refused),
        _ when ReplicationDurability.IsDatabaseLostWithin(error) => Errors.CallLostDatabase(),
        _ => null,
    };

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(request, context);
        }
        catch (RpcException refused)
        {
            Count(context, refused);
            throw;
        }
        catch (Exception error) when (StatusOf(error) is { } refusal)
        {
            throw Logged(context, error, refusal);
        }
        catch (Exception error) when (Unmapped(context, error))
        {
            throw;
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(requestStream, context);
        }
        catch (RpcException refused)
        {
            Count(context, refused);
            throw;
        }
        catch (Exception error) when (StatusOf(error) is { } refusal)
        {
            throw Logged(context, error, refusal);
        }
        catch (Exception error) when (Unmapped(context, error))
        {
            throw;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(request, responseStream, context);
        }
        catch (RpcException refused)
        {
            Count(context, refused);
            throw;
        }
        catch (Exception error) when (StatusOf(error) is { } refusal)
        {
            throw Logged(context, error, refusal);
        }
        catch (Exception error) when (Unmapped(context, error))
        {
            throw;
        }
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(requestStream, responseStream, context);
        }
        catch (RpcException refused)
        {
            Count(context, refused);
            throw;
        }
        catch (Exception error) when (StatusOf(error) is { } refusal)
        {
            throw Logged(context, error, refusal);
        }
        catch (Exception error) when (Unmapped(context, error))
        {
            throw;
        }
    }

    private RpcException Logged(ServerCallContext context, Exception error, RpcException refusal)
    {
        // The reason logged is the one the caller reads, so a log line and a client's report match.
        string reason = refusal.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason ?? refusal.StatusCode.ToString();
        string actor = AuthenticationInterceptor.CallerOrNull(context)?.ToString() ?? "an unauthenticated caller";
        LogRefused(logger, context.Method, actor, reason, error.Message);
        Count(context, refusal);
        return refusal;
    }

    /// <summary>
    /// Logs a fault that no refusal maps (a database error the engine did not expect, a bug) with
    /// its type and, for a PostgreSQL error, its SQLSTATE, and counts it as UNKNOWN, which is what
    /// gRPC answers for it; the caller reads only "Exception was thrown by handler", so without
    /// this line the error would be lost. Returns false, so that the exception passes on as it is
    /// (a fault stays a fault). A call its caller cancelled is not a fault and is not logged.
    /// </summary>
    private bool Unmapped(ServerCallContext context, Exception error)
    {
        if (error is OperationCanceledException && context.CancellationToken.IsCancellationRequested)
        {
            return false;
        }

        string actor = AuthenticationInterceptor.CallerOrNull(context)?.ToString() ?? "an unauthenticated caller";
        string sqlState = error is Npgsql.PostgresException postgres ? postgres.SqlState : "-";
        LogUnmapped(logger, error, context.Method, actor, error.GetType().Name, sqlState, error.Message);
        MeteringTelemetry.CallRefused(context.Method, StatusNames[(int)StatusCode.Unknown], StatusNames[(int)StatusCode.Unknown]);
        return false;
    }

    /// <summary>Counts a refusal, whether a handler built it or this interceptor did; a status without ErrorInfo counts under its status name.</summary>
    private static void Count(ServerCallContext context, RpcException refusal)
    {
        if (refusal.StatusCode is StatusCode.OK or StatusCode.Cancelled)
        {
            return;
        }

        string status = (int)refusal.StatusCode < StatusNames.Length ? StatusNames[(int)refusal.StatusCode] : refusal.StatusCode.ToString();
        MeteringTelemetry.CallRefused(context.Method, status, refusal.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason ?? status);
    }

    /// <summary>The status codes as gRPC's specification and every client spell them, indexed by code.</summary>
    private static readonly string[] StatusNames =
    [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ];

    [LoggerMessage(EventId = 9001, Level = LogLevel.Information, Message = "{Method} by {Actor} refused: {Reason}: {Detail}")]
    private static partial void LogRefused(ILogger logger, string method, string actor, string reason, string detail);

    [LoggerMessage(EventId = 9002, Level = LogLevel.Error, Message = "{Method} by {Actor} failed with an error no refusal maps, answered UNKNOWN: {ErrorType} (SQLSTATE {SqlState}): {Detail}")]
    private static partial void LogUnmapped(ILogger logger, Exception error, string method, string actor, string errorType, string sqlState, string detail);
}
