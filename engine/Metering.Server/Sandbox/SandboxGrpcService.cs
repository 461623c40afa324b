using Google.Protobuf.Reflection;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Sandbox;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Sandbox;

/// <summary>The server's clock over gRPC; on a sandbox, operators move it forward (sandbox.proto).</summary>
internal sealed partial class SandboxGrpcService(TimeProvider time, SandboxClockStore store, ILogger<SandboxGrpcService> logger) : SandboxService.SandboxServiceBase
{
    public override Task<Clock> GetClock(GetClockRequest request, ServerCallContext context) => Task.FromResult(Now());

    public override async Task<Clock> AdvanceClock(AdvanceClockRequest request, ServerCallContext context)
    {
        Actor actor = AuthenticationInterceptor.Caller(context);
        try
        {
            if (time is not SimulatedClock clock)
            {
                throw new SandboxException(SandboxProblem.NotSandbox, "this server runs on real time; only a sandbox served with --clock simulated can move its clock");
            }

            long offset = await store.AdvanceAsync(clock, actor, request.ByMs, context.CancellationToken);
            LogAdvanced(logger, actor.ToString(), request.ByMs, offset);
            return Now();
        }
        catch (SandboxException refused)
        {
            (StatusCode code, SandboxRefusal reason) = refused.Problem == SandboxProblem.AdvanceInvalid
                ? (StatusCode.InvalidArgument, SandboxRefusal.AdvanceInvalid)
                : (StatusCode.FailedPrecondition, SandboxRefusal.ClockNotSimulated);
            throw Errors.Refused(code, ReasonName(reason), refused.Message);
        }
    }

    /// <summary>The reason as sandbox.proto spells it.</summary>
    private static string ReasonName(SandboxRefusal reason) =>
        SandboxReflection.Descriptor.FindTypeByName<EnumDescriptor>(nameof(SandboxRefusal)).FindValueByNumber((int)reason).Name;

    private Clock Now() => new()
    {
        NowUnixMs = time.GetUtcNow().ToUnixTimeMilliseconds(),
        OffsetMs = time is SimulatedClock clock ? clock.OffsetMs : 0,
        Simulated = time is SimulatedClock,
    };

    [LoggerMessage(EventId = 6301, Level = LogLevel.Warning, Message = "Sandbox clock moved forward by {ByMs} ms by {Actor}; it now runs {OffsetMs} ms ahead of real time")]
    private static partial void LogAdvanced(ILogger logger, string actor, long byMs, long offsetMs);
}
