using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Rpc;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Metering.Client.Channels;

/// <summary>Where a client connects and with which certificate files; the paths are PEM files unless said otherwise.</summary>
/// <param name="Servers">https://HOST:PORT (or http:// to a server on this machine), one or several; several are balanced round-robin.</param>
/// <param name="CaPath">The CA that issued the servers' certificates; null or empty for the system's roots.</param>
/// <param name="ClientCertificatePath">The client certificate (with <paramref name="ClientKeyPath"/>), or PKCS#12 alone; null or empty for none.</param>
/// <param name="ClientKeyPath">The private key of <paramref name="ClientCertificatePath"/>.</param>
/// <param name="ReceiveBytesMax">The largest message taken from the server; null for gRPC's default of 4 MiB.</param>
public sealed record ChannelSettings(ServerList Servers, string? CaPath = null, string? ClientCertificatePath = null, string? ClientKeyPath = null, int? ReceiveBytesMax = null)
{
    /// <summary>The largest message sent to the server (a probe's report); null for gRPC's default, no limit.</summary>
    public int? SendBytesMax { get; init; }

    /// <summary>Settings for one server.</summary>
    public ChannelSettings(Uri server, string? caPath = null, string? clientCertificatePath = null, string? clientKeyPath = null, int? receiveBytesMax = null)
        : this(ServerList.Of(server), caPath, clientCertificatePath, clientKeyPath, receiveBytesMax)
    {
    }
}

/// <summary>
/// Opens a client's channel to a Metering server and speaks the parts of the protocol every client
/// shares: the bearer key in the call headers and the refusal reason in a google.rpc.ErrorInfo.
/// </summary>
public static class MeteringChannel
{
    /// <summary>
    /// A channel to <see cref="ChannelSettings.Servers"/>. To several servers, the channel resolves
    /// the list statically and balances calls round-robin over the servers that answer, so a new
    /// call (a stream's reconnect included) may land on another server; the database, not the
    /// server, keeps a stream single-writer.
    /// </summary>
    /// <exception cref="ArgumentException">An address would send the key in cleartext, or a certificate file is missing or unreadable; the message says which, naming the options as the clients spell them.</exception>
    public static GrpcChannel Open(ChannelSettings settings)
    {
        foreach (Uri server in settings.Servers.Addresses)
        {
            // Every call carries the key in a header: cleartext only where it never leaves the machine,
            // as `serve` allows it, whether the address came from an option or the environment.
            if (server.Scheme == Uri.UriSchemeHttp && !server.IsLoopback)
            {
                throw new ArgumentException($"--server {server} is http:// to another machine: the API key would travel in cleartext. Use https://{server.Authority} (with --ca for a private CA)");
            }
        }

        X509Certificate2Collection? roots = null;
        if (!string.IsNullOrEmpty(settings.CaPath))
        {
            string caPath = settings.CaPath;
            roots = [];
            Read(caPath, () => roots.ImportFromPemFile(caPath));
            if (roots.Count == 0)
            {
                throw new ArgumentException($"--ca {caPath} holds no PEM certificate");
            }
        }

        X509Certificate2? certificate = null;
        if (!string.IsNullOrEmpty(settings.ClientCertificatePath))
        {
            string certificatePath = settings.ClientCertificatePath;
            string? keyPath = settings.ClientKeyPath;
            certificate = Read(certificatePath, () => string.IsNullOrEmpty(keyPath)
                ? X509CertificateLoader.LoadPkcs12FromFile(certificatePath, null)
                : X509Certificate2.CreateFromPemFile(certificatePath, keyPath));
        }
        else if (!string.IsNullOrEmpty(settings.ClientKeyPath))
        {
            throw new ArgumentException("--client-key needs --client-cert");
        }

        var options = new GrpcChannelOptions
        {
            HttpHandler = ClientTls.Handler(roots, certificate),
            DisposeHttpClient = true,
            MaxReceiveMessageSize = settings.ReceiveBytesMax ?? new GrpcChannelOptions().MaxReceiveMessageSize,
            MaxSendMessageSize = settings.SendBytesMax ?? new GrpcChannelOptions().MaxSendMessageSize,
        };
        return settings.Servers.Addresses.Count == 1
            ? GrpcChannel.ForAddress(settings.Servers.First, options)
            : Balanced(settings.Servers, options);
    }

    /// <summary>
    /// grpc-dotnet's client-side balancing: a static resolver that names every server and the
    /// round-robin policy, which sends each new call to the next server with a ready connection
    /// and skips one that does not answer until it does again. TLS checks each server's
    /// certificate against its own host name, as a channel to that server alone would.
    /// </summary>
    private static GrpcChannel Balanced(ServerList servers, GrpcChannelOptions options)
    {
        BalancerAddress[] addresses = [.. servers.Addresses.Select(server => new BalancerAddress(server.Host, server.Port))];
        var services = new ServiceCollection();
        services.AddSingleton<ResolverFactory>(new StaticResolverFactory(_ => addresses));
        options.ServiceProvider = services.BuildServiceProvider();
        options.Credentials = servers.First.Scheme == Uri.UriSchemeHttps ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure;
        options.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
        return GrpcChannel.ForAddress("static:///metering", options);
    }

    /// <summary>The call headers that present <paramref name="apiKey"/>.</summary>
    public static Metadata Bearer(string apiKey) => new() { { "authorization", "Bearer " + apiKey } };

    /// <summary>The machine-readable refusal reason of an error (its google.rpc.ErrorInfo), or null.</summary>
    public static string? ReasonOf(RpcException e) => e.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason;

    private static T Read<T>(string path, Func<T> read)
    {
        if (!File.Exists(path))
        {
            throw new ArgumentException($"no file at {Path.GetFullPath(path)}");
        }

        try
        {
            return read();
        }
        catch (CryptographicException e)
        {
            throw new ArgumentException($"{path}: {e.Message}", e);
        }
    }

    private static void Read(string path, Action read) => Read(path, () =>
    {
        read();
        return true;
    });
}
