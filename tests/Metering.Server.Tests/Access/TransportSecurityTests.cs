using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Access;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Access;

/// <summary>
/// TLS and mutual TLS through the real server: who is trusted, which protocol versions are spoken,
/// and how a key pinned to a client certificate is refused without it. Every certificate is made
/// at test time (<see cref="TestCertificates"/>).
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class TransportSecurityTests(PostgresFixture postgres)
{
    private static readonly DateTimeOffset Day = new(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8));

    [Fact]
    public async Task Client_that_does_not_trust_the_servers_ca_fails_the_handshake()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using GrpcChannel trusting = server.NewChannel();
        using GrpcChannel distrusting = TestCertificates.Channel(server.Address, trust: TestCertificates.OtherCa);

        // The same call reaches the service over a channel that trusts the CA, and not the handshake's far side without it.
        Assert.Equal(StatusCode.NotFound, (await CallAsync(trusting, TestServer.ProviderKey)).StatusCode);
        RpcException refused = await CallAsync(distrusting, TestServer.ProviderKey);

        Assert.True(HandshakeFailed(refused), refused.ToString());
    }

    [Fact]
    public async Task Server_certificate_for_another_host_name_fails_the_handshake()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, certificate: TestCertificates.OtherHostServer);
        using GrpcChannel channel = server.NewChannel();

        RpcException refused = await CallAsync(channel, TestServer.ProviderKey);

        Assert.True(HandshakeFailed(refused), refused.ToString());
    }

    [Fact]
    public async Task Server_negotiates_tls_1_3_and_still_serves_a_tls_1_2_only_client()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        Assert.Equal(SslProtocols.Tls13, await HandshakeAsync(server.Address, SslProtocols.Tls12 | SslProtocols.Tls13));
        Assert.Equal(SslProtocols.Tls12, await HandshakeAsync(server.Address, SslProtocols.Tls12));
    }

    [Fact]
    public async Task Pinned_key_without_a_client_certificate_is_refused_with_the_reason_and_changes_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PinAsync(server, TestServer.ProviderKey, TestCertificates.ProviderClient);
        using GrpcChannel channel = server.NewChannel();

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => IngestCall.OpenAsync(new IngestService.IngestServiceClient(channel), "pinned"));

        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.Equal("CLIENT_CERTIFICATE_REQUIRED", IngestCall.Reason(refused));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'pinned'"));
    }

    [Fact]
    public async Task Pinned_key_with_another_providers_client_certificate_is_refused_and_names_the_certificate_presented()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PinAsync(server, TestServer.ProviderKey, TestCertificates.ProviderClient);
        using GrpcChannel channel = server.NewChannel(TestCertificates.OtherProviderClient);

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => IngestCall.OpenAsync(new IngestService.IngestServiceClient(channel), "pinned"));

        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.Equal("CLIENT_CERTIFICATE_MISMATCH", IngestCall.Reason(refused));
        Assert.Equal(Convert.ToHexStringLower(TestCertificates.OtherProviderClient.GetCertHash(HashAlgorithmName.SHA256)),
            refused.GetRpcStatus()!.GetDetail<Google.Rpc.ErrorInfo>()!.Metadata["presented_sha256"]);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'pinned'"));
    }

    [Fact]
    public async Task Pinned_key_with_its_client_certificate_streams_through_the_agents_channel()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PinAsync(server, TestServer.ProviderKey, TestCertificates.ProviderClient);
        var (certificate, key) = TestCertificates.ProviderClientPemPaths;
        using GrpcChannel channel = MeteringChannel.Open(new ChannelSettings(server.Address, TestCertificates.CaPemPath, certificate, key));
        SimulatedCluster site = SimulatedCluster.DemoSites(Day, jobsPerInterval: 2, seed: 5)[0];

        StreamResult result = await new UsageStreamer(channel, TestServer.ProviderKey, new StreamerOptions()).RunAsync("pinned", site.RecordAt, 50, CancellationToken.None);

        Assert.Equal(50UL, result.CommittedSequence);
        Assert.Equal(50L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'pinned'"));
    }

    [Fact]
    public async Task Unpinned_key_works_with_and_without_a_client_certificate()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PinAsync(server, TestServer.ProviderKey, TestCertificates.ProviderClient);
        using GrpcChannel without = server.NewChannel();
        using GrpcChannel with = server.NewChannel(TestCertificates.ProviderClient);

        // NOT_FOUND comes from the service: the call got past authentication.
        Assert.Equal(StatusCode.NotFound, (await CallAsync(without, TestServer.OtherProviderKey)).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await CallAsync(with, TestServer.OtherProviderKey)).StatusCode);
    }

    [Fact]
    public async Task Unpinning_a_key_lets_it_work_without_a_client_certificate_again()
    {
        // Without the look-up cache, so that the unpinning reaches the very next call.
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { AuthenticationCacheMs = 0 });
        long id = await PinAsync(server, TestServer.ProviderKey, TestCertificates.ProviderClient);
        using GrpcChannel channel = server.NewChannel();
        Assert.Equal(StatusCode.Unauthenticated, (await CallAsync(channel, TestServer.ProviderKey)).StatusCode);

        await using (NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString))
        {
            await new CredentialStore(dataSource, TimeProvider.System).PinAsync(new Actor(Role.Operator, "ops"), id, null, CancellationToken.None);
        }

        Assert.Equal(StatusCode.NotFound, (await CallAsync(channel, TestServer.ProviderKey)).StatusCode);
        Assert.Equal(2L, await server.ScalarAsync<long>("SELECT count(*) FROM registry_history WHERE entity = 'credential' AND action IN ('pin', 'unpin')"));
    }

    [Fact]
    public void Pfx_with_its_password_loads_and_a_wrong_password_says_so()
    {
        string folder = Directory.CreateTempSubdirectory("metering-pfx-").FullName;
        string pfx = Path.Combine(folder, "server.pfx");
        File.WriteAllBytes(pfx, TestCertificates.Server.Export(X509ContentType.Pkcs12, "s3cret"));

        using X509Certificate2 loaded = ServerCertificate.Load(pfx, null, "s3cret");
        var wrong = Assert.Throws<ArgumentException>(() => ServerCertificate.Load(pfx, null, "guess"));

        Assert.True(loaded.HasPrivateKey);
        Assert.Equal(TestCertificates.Server.Thumbprint, loaded.Thumbprint);
        Assert.Contains("not a PKCS#12 (PFX) file that this password opens", wrong.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Server_refuses_cleartext_on_a_non_loopback_address_and_https_without_a_certificate()
    {
        string database = await postgres.CreateDatabaseAsync();

        var cleartext = await Assert.ThrowsAsync<ArgumentException>(() => MeteringServer.StartAsync(new ServerSettings { Listen = new Uri("http://0.0.0.0:0"), ConnectionString = database, SigningKey = TestServer.SigningKey }));
        var bare = await Assert.ThrowsAsync<ArgumentException>(() => MeteringServer.StartAsync(new ServerSettings { Listen = new Uri("https://127.0.0.1:0"), ConnectionString = database, SigningKey = TestServer.SigningKey }));

        Assert.Contains("API keys would travel in cleartext", cleartext.Message, StringComparison.Ordinal);
        Assert.Contains("no certificate was given", bare.Message, StringComparison.Ordinal);
    }

    private static async Task<long> PinAsync(TestServer server, string key, X509Certificate2 client)
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString);
        long id = await server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE key_sha256 = @hash", new { hash = CredentialStore.Hash(key) });
        await new CredentialStore(dataSource, TimeProvider.System).PinAsync(new Actor(Role.Operator, "ops"), id, client.GetCertHash(HashAlgorithmName.SHA256), CancellationToken.None);
        return id;
    }

    /// <summary>A provider's call that the service answers NOT_FOUND once it is authenticated.</summary>
    private static Task<RpcException> CallAsync(GrpcChannel channel, string key) =>
        Assert.ThrowsAsync<RpcException>(() => new RawLogService.RawLogServiceClient(channel)
            .GetUploadAsync(new GetUploadRequest { UploadId = "no-such-upload" }, TestServer.Bearer(key)).ResponseAsync);

    private static bool HandshakeFailed(RpcException e)
    {
        for (Exception? inner = e.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            if (inner is AuthenticationException)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A bare TLS handshake (no HTTP) offering only <paramref name="protocols"/>; returns what was negotiated.</summary>
    private static async Task<SslProtocols> HandshakeAsync(Uri address, SslProtocols protocols)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(address.Host, address.Port);
        await using var tls = new SslStream(tcp.GetStream());
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = address.Host,
            EnabledSslProtocols = protocols,
            CertificateChainPolicy = TestCertificates.TrustOnly(TestCertificates.Ca),
            ApplicationProtocols = [SslApplicationProtocol.Http2],
        });
        return tls.SslProtocol;
    }
}
