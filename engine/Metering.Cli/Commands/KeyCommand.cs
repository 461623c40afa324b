using System.CommandLine;
using System.Globalization;
using Metering.Engine.Access;

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

        return new Command("key", "API keys: issue, revoke and list credentials for providers, operators, auditors and settlement.") { issue, revoke, pinCommand, list };
    }

    private static string Pinned(byte[]? pin) => pin is null ? "" : $", pinned to the client certificate with SHA-256 {Convert.ToHexStringLower(pin)}";

    private static int Usage(string? error)
    {
        Console.Error.WriteLine($"error: {error}");
        return 2;
    }

    private static string Local(DateTimeOffset instant) => LocalTime.Minutes(instant);
}
