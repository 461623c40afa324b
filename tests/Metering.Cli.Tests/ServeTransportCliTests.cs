using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Access;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>`metering serve`'s transport rules and `metering key pin`, run as a user runs them.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ServeTransportCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_on_a_non_loopback_http_address_without_insecure_is_refused_and_says_why()
    {
        int port = ServerProcess.FreePort();

        // No database is reachable at this connection string: the refusal must come before it is tried.
        var (exit, output) = await CliProcess.RunAsync("serve", "--listen", $"http://0.0.0.0:{port}", "--connection", "Host=127.0.0.1;Port=1;Timeout=1");

        Assert.Equal(2, exit);
        Assert.Contains("API keys would travel in cleartext", output, StringComparison.Ordinal);
        Assert.Contains("--insecure", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_with_insecure_starts_on_a_non_loopback_http_address()
    {
        string database = await postgres.CreateDatabaseAsync();
        int port = ServerProcess.FreePort();

        await using ServerProcess server = await ServerProcess.StartAsync(new Uri($"http://127.0.0.1:{port}"),
            "serve", "--connection", PostgresFixture.AsRuntimeRole(database), "--listen", $"http://0.0.0.0:{port}", "--insecure", "--signing-key", ServerProcess.SigningKeyPath);
        using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
        RpcException answered = await Assert.ThrowsAsync<RpcException>(() => new RawLogService.RawLogServiceClient(channel)
            .GetUploadAsync(new GetUploadRequest { UploadId = "no-such-upload" }, TestServer.Bearer()).ResponseAsync);

        Assert.Equal(StatusCode.NotFound, answered.StatusCode);
    }

    [Fact]
    public async Task Serve_takes_a_pfx_and_its_password_from_the_environment_and_answers_over_tls()
    {
        string database = await postgres.CreateDatabaseAsync();
        int port = ServerProcess.FreePort();
        string pfx = Path.Combine(Directory.CreateTempSubdirectory("metering-pfx-").FullName, "server.pfx");
        await File.WriteAllBytesAsync(pfx, TestCertificates.Server.Export(X509ContentType.Pkcs12, "s3cret"));
        var address = new Uri($"https://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address,
            new Dictionary<string, string> { ["METERING_TLS_CERT"] = pfx, ["METERING_TLS_PASSWORD"] = "s3cret" },
            "serve", "--connection", PostgresFixture.AsRuntimeRole(database), "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath);
        using GrpcChannel channel = TestCertificates.Channel(server.Address);
        RpcException answered = await Assert.ThrowsAsync<RpcException>(() => new RawLogService.RawLogServiceClient(channel)
            .GetUploadAsync(new GetUploadRequest { UploadId = "no-such-upload" }, TestServer.Bearer()).ResponseAsync);

        Assert.Equal(StatusCode.NotFound, answered.StatusCode);
    }

    [Fact]
    public async Task Serve_with_a_certificate_on_an_http_address_is_refused()
    {
        var (certificate, key) = TestCertificates.ServerPemPaths;

        var (exit, output) = await CliProcess.RunAsync("serve", "--listen", "http://127.0.0.1:1", "--tls-cert", certificate, "--tls-key", key, "--connection", "Host=127.0.0.1;Port=1");

        Assert.Equal(2, exit);
        Assert.Contains("use https://127.0.0.1:1", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Key_pin_pins_a_credential_to_a_certificate_file_through_the_server_and_key_list_shows_it()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long id = await IdAsync(server);
        string expected = Convert.ToHexStringLower(TestCertificates.ProviderClient.GetCertHash(HashAlgorithmName.SHA256));

        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "pin", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--pin-cert", TestCertificates.ProviderClientPemPaths.Certificate);
        var (_, list) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "list");

        Assert.Equal(0, exit);
        Assert.Contains(expected, output, StringComparison.Ordinal);
        Assert.Contains(expected, list, StringComparison.Ordinal);
        Assert.Equal(expected, Convert.ToHexStringLower(await server.ScalarAsync<byte[]>($"SELECT client_cert_sha256 FROM credentials WHERE credential_id = {id}")));
    }

    [Fact]
    public async Task Key_pin_with_a_malformed_thumbprint_is_refused_and_pins_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long id = await IdAsync(server);

        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "pin", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--pin-sha256", "abc123");

        Assert.Equal(2, exit);
        Assert.Contains("is not 64 hex digits", output, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM credentials WHERE client_cert_sha256 IS NOT NULL"));
    }

    private static Task<long> IdAsync(TestServer server) =>
        server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE key_sha256 = @hash", new { hash = CredentialStore.Hash(TestServer.ProviderKey) });
}
