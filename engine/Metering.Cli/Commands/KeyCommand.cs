using System.CommandLine;
using System.Globalization;
using Metering.Engine.Access;
using Metering.Engine.Signing;

namespace Metering.Cli.Commands;

/// <summary>`metering key issue|revoke|list`: API keys for every role, stored as hashes only.</summary>
internal static class KeyCommand
{
    public static Command Create()
    {
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        var actingAs = CommonOptions.ActingOperator();

        var role = new Option<string>("--role")
        {
            Description = "provider (its own data only), operator (registry writes), auditor (reads everything) or settlement (runs batches).",
            Required = true,
        };
        role.AcceptOnlyFromAmong("provider", "operator", "auditor", "settlement");
        var subject = new Option<string>("--subject")
        {
            Description = "Who holds the key: a provider's 18-character credit code, or a person's or system's name.",
            Required = true,
        };
        var label = new Option<string>("--label") { Description = "A note shown in `key list`, for example where the key is deployed.", DefaultValueFactory = _ => "" };
        var pinFile = new Option<FileInfo?>("--client-cert")
        {
            Description = "Pin the key to this client certificate (PEM or DER): the key then works only over mutual TLS with that certificate.",
        };
        var pinHex = new Option<string?>("--client-cert-sha256")
        {
            Description = "Pin the key to the client certificate with this SHA-256 (64 hex digits, colons allowed, as `openssl x509 -noout -fingerprint -sha256` prints it).",
        };
        var issue = new Command("issue", "Issue a new API key. The key is printed once on standard output; the database keeps only its SHA-256.")
        {
            role, subject, label, pinFile, pinHex, actingAs, connection, dataDirectory,
        };
        issue.SetAction((parse, cancellationToken) =>
        {
            if (!ClientCertificatePins.TryRead(parse.GetValue(pinFile), parse.GetValue(pinHex), out byte[]? pin, out string? error))
            {
                return Task.FromResult(Usage(error));
            }

            return CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
            {
                Actor.TryParse(parse.GetValue(role)!, out Role chosen);
                var store = new CredentialStore(dataSource, TimeProvider.System);
                var (credential, key) = await store.IssueAsync(CommonOptions.Operator(parse.GetValue(actingAs)!), chosen, parse.GetValue(subject)!, parse.GetValue(label)!, cancellationToken, pin);
                Console.WriteLine(key);
                Console.Error.WriteLine($"Issued credential {credential.CredentialId} ({credential.Role.ToString().ToLowerInvariant()} {credential.Subject}){Pinned(pin)}. Keep the key: it cannot be shown again.");
                return 0;
            }, cancellationToken);
        });

        var id = new Argument<long>("credential-id") { Description = "The credential's id, as `key list` shows it." };
        var revoke = new Command("revoke", "Revoke a credential; calls with its key are refused from now on.") { id, actingAs, connection, dataDirectory };
        revoke.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            CredentialInfo revoked = await new CredentialStore(dataSource, TimeProvider.System).RevokeAsync(CommonOptions.Operator(parse.GetValue(actingAs)!), parse.GetValue(id), cancellationToken);
            Console.WriteLine($"Revoked credential {revoked.CredentialId} ({Actor.NameOf(revoked.Role)} {revoked.Subject}).");
            return 0;
        }, cancellationToken));

        var unpin = new Option<bool>("--none") { Description = "Remove the pin: the key works again with or without a client certificate." };
        var pinCommand = new Command("pin", "Pin a credential to a client certificate (mutual TLS), or remove its pin with --none.")
        {
            id, pinFile, pinHex, unpin, actingAs, connection, dataDirectory,
        };
        pinCommand.SetAction((parse, cancellationToken) =>
        {
            bool none = parse.GetValue(unpin);
            byte[]? pin = null;
            if (none == (parse.GetValue(pinFile) is not null || parse.GetValue(pinHex) is not null))
            {
                return Task.FromResult(Usage("give one of --client-cert, --client-cert-sha256 or --none"));
            }

            if (!none && !ClientCertificatePins.TryRead(parse.GetValue(pinFile), parse.GetValue(pinHex), out pin, out string? error))
            {
                return Task.FromResult(Usage(error));
            }

            return CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
            {
                CredentialInfo pinned = await new CredentialStore(dataSource, TimeProvider.System).PinAsync(CommonOptions.Operator(parse.GetValue(actingAs)!), parse.GetValue(id), pin, cancellationToken);
                Console.WriteLine(pin is null
                    ? $"Credential {pinned.CredentialId} ({Actor.NameOf(pinned.Role)} {pinned.Subject}) is no longer pinned."
                    : $"Credential {pinned.CredentialId} ({Actor.NameOf(pinned.Role)} {pinned.Subject}){Pinned(pin)}.");
                return 0;
            }, cancellationToken);
        });

        var list = new Command("list", "List credentials (never their keys).") { connection, dataDirectory };
        list.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("id", "role", "subject", "label", "issued", "by", "revoked", "client cert sha256");
            foreach (CredentialInfo c in await new CredentialStore(dataSource, TimeProvider.System).ListAsync(cancellationToken))
            {
                table.Add(c.CredentialId.ToString(CultureInfo.InvariantCulture), Actor.NameOf(c.Role), c.Subject, c.Label, Local(c.IssuedAt), c.IssuedBy,
                    c.RevokedAt is { } at ? $"{Local(at)} by {c.RevokedBy}" : "", c.ClientCertificateSha256 is { } pin ? Convert.ToHexStringLower(pin) : "");
            }

            table.Write(Console.Out);
            return 0;
        }, cancellationToken));

        return new Command("key", "API keys: issue, revoke and list credentials for providers, operators, auditors and settlement; the server's signing key.")
        {
            issue, revoke, pinCommand, list, Signing(),
        };
    }

    /// <summary>`metering key signing new|show`: the server's receipt and tree-head key, a file outside the database.</summary>
    private static Command Signing()
    {
        var output = new Option<string>("--out")
        {
            Description = "Where to write the new private key (PEM, mode 0600). An existing file is never overwritten.",
            Required = true,
        };
        var create = new Command("new", "Make a new ECDSA P-256 signing key for `metering serve --signing-key`. Prints its public key and key id, to publish.") { output };
        create.SetAction(parse =>
        {
            string path = parse.GetValue(output)!;
            using ServerSigningKey key = ServerSigningKey.CreateNew();
            try
            {
                key.WritePrivateKey(path);
            }
            catch (IOException e)
            {
                Console.Error.WriteLine($"error: cannot write {path}: {e.Message}");
                return 2;
            }

            Console.Error.WriteLine($"Wrote {path}. Keep it outside the database and back it up; publish the public key below.");
            WritePublic(key.PublicKey);
            return 0;
        });

        var file = new Argument<string>("file") { Description = "The private key file that `metering serve --signing-key` uses." };
        var show = new Command("show", "Print a signing key's public key (PEM) and key id, to publish.") { file };
        show.SetAction(parse =>
        {
            try
            {
                using ServerSigningKey key = ServerSigningKey.Load(parse.GetValue(file)!);
                WritePublic(key.PublicKey);
                return 0;
            }
            catch (SigningKeyException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        });

        return new Command("signing", "The server's signing key: receipts on acknowledgements and the transparency log's tree heads are signed with it.") { create, show };
    }

    private static void WritePublic(ServerPublicKey key)
    {
        Console.WriteLine($"key id: {key.KeyId}");
        Console.Write(key.Pem);
        Console.WriteLine();
    }

    private static string Pinned(byte[]? pin) => pin is null ? "" : $", pinned to the client certificate with SHA-256 {Convert.ToHexStringLower(pin)}";

    private static int Usage(string? error)
    {
        Console.Error.WriteLine($"error: {error}");
        return 2;
    }

    private static string Local(DateTimeOffset instant) => LocalTime.Minutes(instant);
}
