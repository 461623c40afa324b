using System.Net;

namespace Metering.Server.Hosting;

/// <summary>Which listen addresses a server may bind, with or without TLS.</summary>
public static class TransportRules
{
    /// <summary>The address a listen URI binds: an IP address, or loopback for "localhost".</summary>
    public static IPAddress Bind(Uri listen) =>
        listen.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(listen.DnsSafeHost);

    /// <summary>
    /// Null when the server may listen as asked, else why not. https:// needs a certificate and
    /// http:// takes none. Every call carries an API key in its headers, so cleartext HTTP/2 is
    /// allowed only on a loopback address, where the key never leaves the machine, unless the
    /// operator says explicitly that something else protects the network (insecure).
    /// </summary>
    public static string? Refusal(Uri listen, bool hasCertificate, bool insecure)
    {
        if (listen.Scheme != Uri.UriSchemeHttp && listen.Scheme != Uri.UriSchemeHttps)
        {
            return $"listen address {listen} must be https:// (TLS) or http:// (cleartext, loopback only)";
        }

        if (listen.Scheme == Uri.UriSchemeHttps)
        {
            return hasCertificate ? null : $"listen address {listen} is https:// but no certificate was given; pass --tls-cert (and --tls-key for PEM) or set METERING_TLS_CERT";
        }

        if (hasCertificate)
        {
            return $"a certificate was given but listen address {listen} is http://; use https://{listen.Authority}";
        }

        return IPAddress.IsLoopback(Bind(listen)) || insecure
            ? null
            : $"listen address {listen} is not a loopback address and has no TLS: API keys would travel in cleartext. Serve https:// with a certificate (--tls-cert), or pass --insecure if a TLS proxy or a private network protects it";
    }
}
