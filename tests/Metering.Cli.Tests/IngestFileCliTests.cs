using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

[Collection(PostgresCollection.Name)]
public sealed class IngestFileCliTests(PostgresFixture postgres)
{
    private static string Sample(string name) => Path.Combine(TestRecords.RepositoryRoot(), "samples", "RawLogs", name);

    [Fact]
    public async Task Ingest_file_uploads_the_sample_and_reports_its_refused_lines()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var (exit, output) = await RunAsync(server, Sample("sacct-2026-11-20.txt"));

        // The good lines are committed and three are refused: neither success nor a refusal of the upload.
        Assert.Equal(7, exit);
        Assert.Contains("Upload complete.", output, StringComparison.Ordinal);
        Assert.Contains("UNMAPPED_ACCOUNT", output, StringComparison.Ordinal);
        Assert.Contains("ELAPSED_MISMATCH", output, StringComparison.Ordinal);
        Assert.Equal(5L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'slurm-nanshan'"));

        var (again, _) = await RunAsync(server, Sample("sacct-2026-11-20.txt"));
        Assert.Equal(7, again);
        Assert.Equal(5L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'slurm-nanshan'"));
    }

    [Fact]
    public async Task Ingest_file_without_the_ca_does_not_trust_the_server_and_uploads_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var (exit, output) = await CliProcess.RunAsync(
            "ingest-file", Sample("sacct-2026-11-20.txt"), "--server", server.Address.ToString().TrimEnd('/'), "--api-key", TestServer.ProviderKey,
            "--stream", "slurm-nanshan", "--format", "sacct", "--mapping", Sample("mapping.json"));

        Assert.Equal(5, exit);
        Assert.Contains("SSL connection could not be established", output, StringComparison.Ordinal);
        Assert.Contains("--ca", output, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_uploads"));
    }

    [Fact]
    public async Task Ingest_file_with_a_broken_mapping_says_what_is_wrong()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string mapping = Path.Combine(Directory.CreateTempSubdirectory("metering-map-").FullName, "map.json");
        await File.WriteAllTextAsync(mapping, """{"accountHolders": {"lab-vision": "not-a-code"}, "site": "x"}""");

        var (exit, output) = await RunAsync(server, Sample("sacct-2026-11-20.txt"), mapping);

        Assert.Equal(4, exit);
        Assert.Contains("refused: InvalidArgument HEADER_INVALID", output, StringComparison.Ordinal);
        Assert.Contains("not-a-code", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ingest_file_commits_the_dcgm_sample_with_its_sm_activity_and_refuses_the_figure_above_one()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var (exit, output) = await CliProcess.RunAsync(
            "ingest-file", Sample("dcgm-jobs-2026-11-20.jsonl"), "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath,
            "--api-key", TestServer.ProviderKey, "--stream", "jobs-nanshan", "--format", "jsonl", "--mapping", Sample("mapping-sm-active.json"));

        Assert.True(exit == 7, output);
        Assert.Contains("SM_ACTIVE_OUT_OF_RANGE", output, StringComparison.Ordinal);
        Assert.Equal(["train-8841=7315", "train-8842=125", "eval-311=null"],
            await server.QueryAsync<string>("SELECT job_id || '=' || coalesce(sm_active_bp::text, 'null') FROM usage_records WHERE stream_id = 'jobs-nanshan' ORDER BY sequence"));
    }

    private static Task<(int ExitCode, string Output)> RunAsync(TestServer server, string file, string? mapping = null) =>
        CliProcess.RunAsync(
            "ingest-file", file, "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey,
            "--stream", "slurm-nanshan", "--format", "sacct", "--mapping", mapping ?? Sample("mapping.json"));
}
