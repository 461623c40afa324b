using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Fixtures;

namespace Metering.Bench.Load;

/// <summary>
/// A private CA and the server certificate it issues for 127.0.0.1, made at run time with
/// CertificateRequest and never written to disk, plus a second CA that issued nothing, to show
/// that a client pinned to the wrong CA is refused. ECDSA P-256, like the tests' certificates.
/// </summary>
internal sealed class BenchCertificates : IDisposable
{
    private BenchCertificates(X509Certificate2 ca, X509Certificate2 server, X509Certificate2 otherCa) => (Ca, Server, OtherCa) = (ca, server, otherCa);

    public X509Certificate2 Ca { get; }

    public X509Certificate2 Server { get; }

    public X509Certificate2 OtherCa { get; }

    public static BenchCertificates Make()
    {
        DateTimeOffset now = DateTimeOffset.UtcNow;
        X509Certificate2 ca = CertificateMaker.Authority("CN=Metering Bench CA", now, now.AddDays(1));
        X509Certificate2 server = CertificateMaker.Server(ca, "CN=127.0.0.1", now, now.AddHours(12), names => names.AddIpAddress(IPAddress.Loopback));
        return new BenchCertificates(ca, server, CertificateMaker.Authority("CN=Someone Else's CA", now, now.AddDays(1)));
    }

    /// <summary>
    /// A channel that trusts <paramref name="trust"/> only, and reports every TLS handshake: the
    /// SHA-256 thumbprint of the certificate the server presented and whether it chained to that CA without error.
    /// </summary>
    public static GrpcChannel Channel(Uri address, X509Certificate2 trust, Action<string?, SslPolicyErrors>? handshake = null)
    {
        SocketsHttpHandler handler = ClientTls.Handler([trust], clientCertificate: null);
        handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
        {
            handshake?.Invoke(certificate?.GetCertHashString(HashAlgorithmName.SHA256), errors);
            return errors == SslPolicyErrors.None;
        };
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true, MaxSendMessageSize = null });
    }

    public void Dispose()
    {
        Ca.Dispose();
        Server.Dispose();
        OtherCa.Dispose();
    }
}
