using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Access;

/// <summary>
/// The caller refusals every service uses have their own enum (access.proto's CallerRefusal), yet
/// travel as the reason strings clients have always matched on; these are written out here, not
/// derived, so that a renamed value shows.
/// </summary>
public sealed class CallerRefusalTests
{
    [Fact]
    public void Every_caller_refusal_travels_as_the_reason_and_status_clients_have_always_seen()
    {
        var seen = Enum.GetValues<CallerRefusal>()
            .Where(refusal => refusal != CallerRefusal.Unspecified)
            .ToDictionary(refusal => CallerRefusals.Reason(refusal), CallerRefusals.CodeFor);

        Assert.Equal(
            new Dictionary<string, StatusCode>
            {
                ["UNAUTHENTICATED"] = StatusCode.Unauthenticated,
                ["CLIENT_CERTIFICATE_REQUIRED"] = StatusCode.Unauthenticated,
                ["CLIENT_CERTIFICATE_MISMATCH"] = StatusCode.Unauthenticated,
                ["ROLE_NOT_ALLOWED"] = StatusCode.PermissionDenied,
            },
            seen);
    }

    [Fact]
    public void A_caller_refusal_carries_its_reason_and_status_on_the_wire()
    {
        RpcException refused = CallerRefusals.Refused(CallerRefusal.RoleNotAllowed, "the auditor role may not call /metering.v1.AccessService/IssueKey");

        Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (refused.StatusCode, Metering.Server.Fixtures.IngestCall.Reason(refused)));
    }
}
