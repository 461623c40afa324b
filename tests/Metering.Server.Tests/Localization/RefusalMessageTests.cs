using System.Reflection;
using Google.Protobuf.Reflection;
using Google.Rpc;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Server.Localization;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Localization;

[Collection(PostgresCollection.Name)]
public sealed class RefusalMessageTests(PostgresFixture postgres)
{
    /// <summary>
    /// The reason of every value of every *Refusal enum the protos define, but the UNSPECIFIED
    /// ones: the value's name, less its enum's name as a prefix where it carries one
    /// (CALLER_REFUSAL_UNAUTHENTICATED travels as UNAUTHENTICATED), as the protos document.
    /// </summary>
    private static List<string> ContractReasons() =>
    [
        .. typeof(IngestRequest).Assembly.GetTypes()
            .Where(type => type.Namespace == "Metering.Protocol.V1" && type.Name.EndsWith("Reflection", StringComparison.Ordinal))
            .Select(type => (FileDescriptor)type.GetProperty("Descriptor", BindingFlags.Public | BindingFlags.Static)!.GetValue(null)!)
            .SelectMany(file => file.EnumTypes)
            .Where(type => type.Name.EndsWith("Refusal", StringComparison.Ordinal))
            .SelectMany(type => type.Values)
            .Where(value => value.Number != 0)
            .Select(value => value.Name.StartsWith(UpperSnake(value.EnumDescriptor.Name) + "_", StringComparison.Ordinal)
                ? value.Name[(UpperSnake(value.EnumDescriptor.Name).Length + 1)..]
                : value.Name),
    ];

    /// <summary>CallerRefusal as CALLER_REFUSAL, the form protobuf's style gives a value prefix.</summary>
    private static string UpperSnake(string name) =>
        string.Concat(name.Select((c, i) => i > 0 && char.IsUpper(c) ? "_" + c : char.ToUpperInvariant(c).ToString()));

    [Fact]
    public void Every_refusal_reason_in_the_protos_has_a_Chinese_message()
    {
        List<string> reasons = ContractReasons();

        Assert.True(reasons.Count > 100, $"found only {reasons.Count} reasons: the enum scan is broken");
        string[] missing = [.. reasons.Where(reason => RefusalMessages.ChineseFor(reason) is null)];
        Assert.True(missing.Length == 0, "no Chinese message (Localization/refusals.zh-CN.tsv) for: " + string.Join(", ", missing));
    }

    [Fact]
    public void The_Chinese_table_names_no_reason_the_protos_lack()
    {
        var reasons = ContractReasons().ToHashSet(StringComparer.Ordinal);

        string[] stale = [.. RefusalMessages.Reasons.Where(reason => !reasons.Contains(reason))];
        Assert.True(stale.Length == 0, "refusals.zh-CN.tsv names reasons no proto defines: " + string.Join(", ", stale));
    }

    [Fact]
    public async Task A_refusal_over_the_wire_keeps_its_reason_and_carries_its_Chinese_message()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var refused = await Assert.ThrowsAsync<RpcException>(() => server.RegistryClient()
            .GetOrganisationAsync(new GetOrganisationRequest { CreditCode = "91440300MA5FXXXXX0" }, TestServer.Bearer("not-a-key")).ResponseAsync);

        Google.Rpc.Status status = refused.GetRpcStatus()!;
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.Equal("UNAUTHENTICATED", status.GetDetail<ErrorInfo>()!.Reason);
        LocalizedMessage chinese = status.GetDetail<LocalizedMessage>()!;
        Assert.Equal("zh-CN", chinese.Locale);
        Assert.Equal(RefusalMessages.ChineseFor("UNAUTHENTICATED"), chinese.Message);
        Assert.Contains("密钥", chinese.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_cli_prints_the_Chinese_message_under_a_Chinese_locale_only()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string[] command = ["settle", "list", "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", "not-a-key"];

        var (chineseExit, chinese) = await CliProcess.RunWithEnvironmentAsync(new Dictionary<string, string> { ["LANG"] = "zh_CN.UTF-8" }, command);
        var (englishExit, english) = await CliProcess.RunWithEnvironmentAsync(new Dictionary<string, string> { ["LANG"] = "en_US.UTF-8" }, command);

        Assert.Equal((4, 4), (chineseExit, englishExit));
        Assert.Contains("Unauthenticated UNAUTHENTICATED", chinese, StringComparison.Ordinal);
        Assert.Contains(RefusalMessages.ChineseFor("UNAUTHENTICATED")!, chinese, StringComparison.Ordinal);
        Assert.Contains("Unauthenticated UNAUTHENTICATED", english, StringComparison.Ordinal);
        Assert.DoesNotContain(RefusalMessages.ChineseFor("UNAUTHENTICATED")!, english, StringComparison.Ordinal);
    }
}
