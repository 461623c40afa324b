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
        var issue = new Command("issue", "Issue a new API key. The key is printed once on standard output; the database keeps only its SHA-256.")
        {
            role, subject, label, actingAs, connection, dataDirectory,
        };
        issue.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Actor.TryParse(parse.GetValue(role)!, out Role chosen);
            var store = new CredentialStore(dataSource, TimeProvider.System);
            var (credential, key) = await store.IssueAsync(CommonOptions.Operator(parse.GetValue(actingAs)!), chosen, parse.GetValue(subject)!, parse.GetValue(label)!, cancellationToken);
            Console.WriteLine(key);
            Console.Error.WriteLine($"Issued credential {credential.CredentialId} ({credential.Role.ToString().ToLowerInvariant()} {credential.Subject}). Keep the key: it cannot be shown again.");
            return 0;
        }, cancellationToken));

        var id = new Argument<long>("credential-id") { Description = "The credential's id, as `key list` shows it." };
        var revoke = new Command("revoke", "Revoke a credential; calls with its key are refused from now on.") { id, actingAs, connection, dataDirectory };
        revoke.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            CredentialInfo revoked = await new CredentialStore(dataSource, TimeProvider.System).RevokeAsync(CommonOptions.Operator(parse.GetValue(actingAs)!), parse.GetValue(id), cancellationToken);
            Console.WriteLine($"Revoked credential {revoked.CredentialId} ({Actor.NameOf(revoked.Role)} {revoked.Subject}).");
            return 0;
        }, cancellationToken));

        var list = new Command("list", "List credentials (never their keys).") { connection, dataDirectory };
        list.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("id", "role", "subject", "label", "issued", "by", "revoked");
            foreach (CredentialInfo c in await new CredentialStore(dataSource, TimeProvider.System).ListAsync(cancellationToken))
            {
                table.Add(c.CredentialId.ToString(CultureInfo.InvariantCulture), Actor.NameOf(c.Role), c.Subject, c.Label, Local(c.IssuedAt), c.IssuedBy,
                    c.RevokedAt is { } at ? $"{Local(at)} by {c.RevokedBy}" : "");
            }

            table.Write(Console.Out);
            return 0;
        }, cancellationToken));

        return new Command("key", "API keys: issue, revoke and list credentials for providers, operators, auditors and settlement.") { issue, revoke, list };
    }

    private static string Local(DateTimeOffset instant) => LocalTime.Minutes(instant);
}
