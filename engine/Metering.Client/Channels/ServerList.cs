namespace Metering.Client.Channels;

/// <summary>
/// The servers a client may call: one, or several stateless `metering serve` processes on one
/// database, which the channel balances round-robin. Written as a comma-separated list
/// (https://a:7390,https://b:7390); every address has the same scheme.
/// </summary>
public sealed class ServerList
{
    /// <summary>
    /// The most servers one list names. A deployment runs a handful behind one name; a longer list
    /// is more likely a pasted file than a plan, and each address holds a connection open.
    /// </summary>
    public const int ServersMax = 16;

    private ServerList(IReadOnlyList<Uri> addresses) => Addresses = addresses;

    /// <summary>The addresses, in the order given, without duplicates.</summary>
    public IReadOnlyList<Uri> Addresses { get; }

    /// <summary>The first address: the only one where the list names one.</summary>
    public Uri First => Addresses[0];

    /// <summary>One server.</summary>
    public static ServerList Of(Uri server) => new([server]);

    /// <summary>
    /// Parses "https://a:7390,https://b:7390" (commas, optional spaces). False with why, naming
    /// <paramref name="optionName"/>, for an address that is not http:// or https://, a mix of
    /// schemes, a repeated address, an address with a path, or more than <see cref="ServersMax"/>.
    /// </summary>
    public static bool TryParse(string text, string optionName, out ServerList? servers, out string? problem)
    {
        servers = null;
        string[] parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0)
        {
            problem = $"{optionName} names no server";
            return false;
        }

        if (parts.Length > ServersMax)
        {
            problem = $"{optionName} names {parts.Length} servers; at most {ServersMax} are taken";
            return false;
        }

        var addresses = new List<Uri>(parts.Length);
        foreach (string part in parts)
        {
            if (!Uri.TryCreate(part, UriKind.Absolute, out Uri? uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            {
                problem = $"{optionName} '{part}' is not an https:// or http:// address (for example https://metering.example.org:7390)";
                return false;
            }

            if (parts.Length > 1 && uri.AbsolutePath != "/")
            {
                // A balanced channel calls each server at its root; a path would be silently dropped.
                problem = $"{optionName} '{part}' has a path; several servers are named by scheme, host and port only";
                return false;
            }

            if (addresses.Count > 0 && uri.Scheme != addresses[0].Scheme)
            {
                problem = $"{optionName} mixes http:// and https://; one channel speaks one of them to every server";
                return false;
            }

            if (addresses.Exists(known => Uri.Compare(known, uri, UriComponents.SchemeAndServer, UriFormat.Unescaped, StringComparison.OrdinalIgnoreCase) == 0))
            {
                problem = $"{optionName} names {uri.GetLeftPart(UriPartial.Authority)} twice";
                return false;
            }

            addresses.Add(uri);
        }

        servers = new ServerList(addresses);
        problem = null;
        return true;
    }

    /// <summary>The list as it is written on the command line.</summary>
    public override string ToString() => string.Join(',', Addresses.Select(a => a.ToString().TrimEnd('/')));
}
