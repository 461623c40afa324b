using Dapper;
using Npgsql;

namespace Metering.Engine.Settlement;

/// <summary>
/// The names of the parties a statement mentions, for the people who read it: providers as the
/// registry has them, holders as the voucher book has them. The credit code stays the key the
/// data uses; a name is shown beside it, never instead of it, and a code with no name shows alone.
/// </summary>
public sealed record PartyNames(IReadOnlyDictionary<string, string> Providers, IReadOnlyDictionary<string, string> Holders)
{
    public static readonly PartyNames None = new(new Dictionary<string, string>(), new Dictionary<string, string>());

    public string? Provider(string code) => Providers.GetValueOrDefault(code);

    public string? Holder(string code) => Holders.GetValueOrDefault(code);
}

/// <summary>
/// Looks up the names of a statement's parties when it is rendered. Names are not part of the
/// canonical form: a statement's hash covers credit codes only, so a renamed organisation changes
/// how its statements read and never what they prove.
/// </summary>
public sealed class StatementNames(NpgsqlDataSource dataSource)
{
    public async Task<PartyNames> OfAsync(PartyStatement statement, CancellationToken cancellationToken)
    {
        string[] codes =
        [
            .. statement.Rows.SelectMany(r => new[] { r.Provider, r.Holder, r.Payee }).Append(statement.Party)
                .Where(c => c.Length > 0).Distinct(StringComparer.Ordinal),
        ];
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var providers = (await connection.QueryAsync<(string Code, string Name)>(new CommandDefinition(
                "SELECT provider_id, name FROM organisations WHERE provider_id = ANY(@codes)", new { codes }, cancellationToken: cancellationToken)))
            .ToDictionary(p => p.Code, p => p.Name, StringComparer.Ordinal);
        var holders = (await connection.QueryAsync<(string Code, string Name)>(new CommandDefinition(
                "SELECT holder_code, name FROM voucher_holders WHERE holder_code = ANY(@codes)", new { codes }, cancellationToken: cancellationToken)))
            .ToDictionary(h => h.Code, h => h.Name, StringComparer.Ordinal);
        return new PartyNames(providers, holders);
    }
}
