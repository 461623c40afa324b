using Google.Rpc;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using AdmissionNotice = Metering.Engine.Registry.AdmissionNotice;
using OperatorDecision = Metering.Engine.Registry.OperatorDecision;

namespace Metering.Server.Tests.Registry;

/// <summary>The public notice and the admitted list: served to anyone without a key, and only what the bureau posts.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PublicationTests(PostgresFixture postgres)
{
    private static string Reason(RpcException e) => e.GetRpcStatus()!.GetDetail<ErrorInfo>()!.Reason;

    /// <summary>
    /// A scene with a five-day notice period: one provider admitted once its notice ran, and then
    /// another's application in public notice now.
    /// </summary>
    private static async Task<(RegistryScene Scene, string Code, string AdmittedCode)> SceneWithNoticeAsync(PostgresFixture postgres)
    {
        RegistryScene scene = await RegistryScene.StartAsync(postgres, noticeDays: 5);
        var (admittedCode, admittedKey) = await scene.RegisterAsync();
        long admitted = await OpenNoticeAsync(scene, admittedCode, admittedKey);
        scene.Clock.Advance(TimeSpan.FromDays(6));
        var proposed = await scene.Engine.DecideAdmissionAsync(Admissions.Operator, new OperatorDecision(admitted, Pass: true), CancellationToken.None);
        await scene.Engine.ApproveProposalAsync(Admissions.SecondOperator, admitted, proposed.PendingProposal!.ProposalNo, CancellationToken.None);
        await scene.Engine.IssueAdmissionNoticeAsync(Admissions.Operator, new AdmissionNotice(admitted, $"PUB-{admittedCode}"), CancellationToken.None);
        var (code, key) = await scene.RegisterAsync();
        await OpenNoticeAsync(scene, code, key);
        return (scene, code, admittedCode);
    }

    /// <summary>Files, reviews, verifies (four-eyes) and opens the public notice of an application; returns its id.</summary>
    private static async Task<long> OpenNoticeAsync(RegistryScene scene, string code, Metadata key)
    {
        Application filed = await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key);
        await scene.Engine.ReviewMaterialsAsync(Admissions.Operator, new OperatorDecision(filed.ApplicationId, Pass: true), CancellationToken.None);
        var proposed = await scene.Engine.RecordVerificationAsync(Admissions.Operator,
            filed.ApplicationId, pass: true, verifiedFp16Gflops: 316_608_000, verifierParts: [], reasons: "", CancellationToken.None);
        await scene.Engine.ApproveProposalAsync(Admissions.SecondOperator, filed.ApplicationId, proposed.PendingProposal!.ProposalNo, CancellationToken.None);
        await scene.Engine.OpenPublicNoticeAsync(Admissions.Operator, new OperatorDecision(filed.ApplicationId, Pass: true), CancellationToken.None);
        return filed.ApplicationId;
    }

    [Fact]
    public async Task Anyone_without_a_key_reads_the_public_notice_and_the_admitted_list()
    {
        var (scene, code, admittedCode) = await SceneWithNoticeAsync(postgres);
        await using RegistryScene _ = scene;
        // No authorization header at all: these lists are for everyone.
        var client = new PublicationService.PublicationServiceClient(scene.Server.NewChannel());

        PublishedList notice = await client.GetPublicNoticeAsync(new GetPublicNoticeRequest { BatchId = RegistryScene.Batch });
        PublishedList admitted = await client.GetAdmittedListAsync(new GetAdmittedListRequest { BatchId = RegistryScene.Batch });

        PublishedEntry noticed = Assert.Single(notice.Entries);
        Assert.Equal((code, $"Applicant {code[^5..]}", Admissions.ServiceItem, 316_608_000L), (noticed.CreditCode, noticed.Name, noticed.ServiceItem, noticed.VerifiedFp16Gflops));
        Assert.Equal(scene.Clock.GetUtcNow().AddDays(5).ToUnixTimeMilliseconds(), noticed.NoticeEndsUnixMs);
        Assert.Equal("", noticed.NoticeNumber);
        PublishedEntry listed = Assert.Single(admitted.Entries);
        Assert.Equal(admittedCode, listed.CreditCode);
        Assert.NotEqual("", listed.NoticeNumber);
        Assert.Equal(RegistryScene.ValidityEnds.ToUnixTimeMilliseconds(), listed.ValidUntilUnixMs);
        Assert.False(listed.Suspended);
    }

    [Fact]
    public async Task A_notice_whose_period_has_run_leaves_the_public_notice()
    {
        var (scene, _, _) = await SceneWithNoticeAsync(postgres);
        await using RegistryScene _ = scene;
        scene.Clock.Advance(TimeSpan.FromDays(5));
        // A fresh server over the same database and clock: nothing cached from before.
        await using TestServer later = await TestServer.StartAsync(postgres, time: scene.Clock, database: scene.Server.ConnectionString);

        PublishedList notice = await new PublicationService.PublicationServiceClient(later.NewChannel())
            .GetPublicNoticeAsync(new GetPublicNoticeRequest { BatchId = RegistryScene.Batch });

        Assert.Empty(notice.Entries);
    }

    [Fact]
    public async Task A_malformed_or_unknown_batch_is_refused_with_its_reason()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var client = new PublicationService.PublicationServiceClient(server.NewChannel());

        var malformed = await Assert.ThrowsAsync<RpcException>(() => client.GetPublicNoticeAsync(new GetPublicNoticeRequest { BatchId = "2025; DROP TABLE organisations" }).ResponseAsync);
        var missing = await Assert.ThrowsAsync<RpcException>(() => client.GetAdmittedListAsync(new GetAdmittedListRequest { BatchId = "1999" }).ResponseAsync);
        var empty = await Assert.ThrowsAsync<RpcException>(() => client.GetPublicNoticeAsync(new GetPublicNoticeRequest()).ResponseAsync);

        Assert.Equal((StatusCode.InvalidArgument, "FIELD_INVALID"), (malformed.StatusCode, Reason(malformed)));
        Assert.Equal((StatusCode.NotFound, "BATCH_UNKNOWN"), (missing.StatusCode, Reason(missing)));
        Assert.Equal((StatusCode.InvalidArgument, "FIELD_INVALID"), (empty.StatusCode, Reason(empty)));
    }

    [Fact]
    public async Task A_public_method_opens_nothing_else_to_a_caller_without_a_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        // The same channel, no key: the registry's own lists stay closed.
        var registry = new RegistryService.RegistryServiceClient(server.NewChannel());

        var refused = await Assert.ThrowsAsync<RpcException>(() => registry.ListApplicationsAsync(new ListApplicationsRequest()).ResponseAsync);

        Assert.Equal((StatusCode.Unauthenticated, "UNAUTHENTICATED"), (refused.StatusCode, Reason(refused)));
    }

    [Fact]
    public async Task Registry_publish_writes_the_lists_in_Chinese_as_csv_html_and_json()
    {
        var (scene, code, admittedCode) = await SceneWithNoticeAsync(postgres);
        await using RegistryScene _ = scene;
        string folder = Directory.CreateTempSubdirectory("metering-publish-").FullName;
        string Server() => scene.Server.Address.ToString().TrimEnd('/');

        var (csvExit, csvOutput) = await CliProcess.RunAsync("registry", "publish", "notice", "--batch", RegistryScene.Batch, "--format", "csv",
            "--out", Path.Combine(folder, "notice.csv"), "--server", Server(), "--ca", TestCertificates.CaPemPath);
        var (htmlExit, htmlOutput) = await CliProcess.RunAsync("registry", "publish", "admitted", "--batch", RegistryScene.Batch, "--format", "html",
            "--out", Path.Combine(folder, "admitted.html"), "--server", Server(), "--ca", TestCertificates.CaPemPath);
        var (jsonExit, json) = await CliProcess.RunAsync("registry", "publish", "admitted", "--format", "json", "--server", Server(), "--ca", TestCertificates.CaPemPath);
        var (badExit, badOutput) = await CliProcess.RunAsync("registry", "publish", "notice", "--batch", "no batch", "--server", Server(), "--ca", TestCertificates.CaPemPath);

        Assert.True(csvExit == 0, csvOutput);
        string[] csv = await File.ReadAllLinesAsync(Path.Combine(folder, "notice.csv"));
        Assert.StartsWith("序号,机构名称,统一社会信用代码,服务项目,批次", csv[0].TrimStart('\uFEFF'), StringComparison.Ordinal);
        Assert.Equal("index,name,credit_code,service_item,batch_id,declared_pflops,verified_pflops,notice_ends", csv[1]);
        Assert.Equal(3, csv.Length);
        Assert.Contains($",{code},", csv[2], StringComparison.Ordinal);
        Assert.Contains(",316.608,", csv[2], StringComparison.Ordinal);

        Assert.True(htmlExit == 0, htmlOutput);
        string html = await File.ReadAllTextAsync(Path.Combine(folder, "admitted.html"));
        Assert.Contains("<html lang=\"zh-CN\">", html, StringComparison.Ordinal);
        Assert.Contains($"{RegistryScene.Batch} 批次算力服务商入库名单", html, StringComparison.Ordinal);
        Assert.Contains($"<tr data-credit-code=\"{admittedCode}\">", html, StringComparison.Ordinal);
        Assert.Contains("<td>在库</td>", html, StringComparison.Ordinal);
        Assert.DoesNotContain(code, html, StringComparison.Ordinal);

        Assert.True(jsonExit == 0, json);
        Assert.Contains("\"title\": \"算力服务商入库名单\"", json, StringComparison.Ordinal);
        Assert.Contains($"\"credit_code\": \"{admittedCode}\"", json, StringComparison.Ordinal);

        Assert.Equal(2, badExit);
        Assert.Contains("is not a batch id", badOutput, StringComparison.Ordinal);
    }
}
