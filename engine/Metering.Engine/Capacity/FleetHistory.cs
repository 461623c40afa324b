using System.Collections.Frozen;
using Dapper;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>A provider has more completed fleet validations in the span asked for than the reader takes at once.</summary>
internal sealed class FleetHistoryLimitExceededException(string message) : Exception(message);

/// <summary>
/// The fleet one completed validation validated: the devices of each model in its inventory
/// (every declared node, the sampled and the unsampled alike, as ingest counts them), from its
/// completion until its expiry or until a later validation completes, whichever comes first.
/// </summary>
public sealed class ValidatedFleet
{
    private readonly FrozenDictionary<string, long> _devices;

    internal ValidatedFleet(long validationId, int inventoryVersion, long completedUnixMs, long expiresUnixMs, IDictionary<string, long> devices)
    {
        ValidationId = validationId;
        InventoryVersion = inventoryVersion;
        CompletedUnixMs = completedUnixMs;
        ExpiresUnixMs = expiresUnixMs;
        _devices = devices.ToFrozenDictionary(StringComparer.Ordinal);
    }

    public long ValidationId { get; }

    public int InventoryVersion { get; }

    /// <summary>The validation counts from this instant (its completion), inclusive.</summary>
    public long CompletedUnixMs { get; }

    /// <summary>...to this one (its expiry), exclusive.</summary>
    public long ExpiresUnixMs { get; }

    /// <summary>Devices per model; a model the inventory does not hold is absent.</summary>
    public IReadOnlyDictionary<string, long> Devices => _devices;

    /// <summary>Devices of a model; 0 for a model the inventory does not hold.</summary>
    public long DevicesOf(string model) => _devices.GetValueOrDefault(model);

    /// <summary>How the figure is named to people: in refusals, anomalies and reports.</summary>
    public string Name => $"fleet validation {ValidationId}";
}

/// <summary>A stretch of time [FromUnixMs, UntilUnixMs) during which one validation, or none, was in force.</summary>
public readonly record struct FleetStretch(long FromUnixMs, long UntilUnixMs, ValidatedFleet? Fleet);

/// <summary>
/// The one definition of which validated fleet is in force when, shared by ingest's plausibility
/// check (<see cref="FleetSnapshot"/>) and the audit's capacity detector and report.
///
/// At an instant t the validation in force is the provider's latest completed validation with
/// completion ≤ t (latest by completion time, then by validation id), provided t is before its
/// expiry; otherwise none is in force. A newer completion replaces an older validation at once;
/// an expired latest validation is not replaced by an earlier one that would still be unexpired
/// (that happens only if the validity setting was shortened): the capacity README's "current"
/// validation, read at t. Completed validations and their inventories are never rewritten, so the
/// history can be read back for any past instant.
/// </summary>
public sealed class FleetHistory
{
    /// <summary>Completed validations one read takes at most.</summary>
    public const int ValidationsMax = 10_000;

    private readonly ValidatedFleet[] _validations;

    private FleetHistory(ValidatedFleet[] validations) => _validations = validations;

    public static FleetHistory None { get; } = new([]);

    /// <summary>A history of the given validations, ordered by completion and then by id, as the store orders them.</summary>
    internal static FleetHistory Of(IEnumerable<ValidatedFleet> validations) =>
        new([.. validations.OrderBy(v => v.CompletedUnixMs).ThenBy(v => v.ValidationId)]);

    /// <summary>The validations read, in order of completion.</summary>
    public IReadOnlyList<ValidatedFleet> Validations => _validations;

    /// <summary>The validation in force at an instant, or null when none is.</summary>
    public ValidatedFleet? InForceAt(long unixMs)
    {
        ValidatedFleet? latest = null;
        foreach (ValidatedFleet validation in _validations)
        {
            if (validation.CompletedUnixMs > unixMs)
            {
                break;
            }

            latest = validation;
        }

        return latest is not null && unixMs < latest.ExpiresUnixMs ? latest : null;
    }

    /// <summary>
    /// [from, until) cut where the validation in force changes, each stretch with the validation in
    /// force throughout it (null: none). Consecutive stretches differ; together they cover the span.
    /// </summary>
    public IReadOnlyList<FleetStretch> Stretches(long fromUnixMs, long untilUnixMs)
    {
        var stretches = new List<FleetStretch>();
        if (untilUnixMs <= fromUnixMs)
        {
            return stretches;
        }

        long[] cuts = _validations.SelectMany(v => new[] { v.CompletedUnixMs, v.ExpiresUnixMs })
            .Where(t => t > fromUnixMs && t < untilUnixMs).Append(untilUnixMs).Distinct().Order().ToArray();
        long start = fromUnixMs;
        ValidatedFleet? fleet = InForceAt(fromUnixMs);
        foreach (long cut in cuts)
        {
            ValidatedFleet? next = cut < untilUnixMs ? InForceAt(cut) : null;
            if (cut == untilUnixMs || !ReferenceEquals(next, fleet))
            {
                stretches.Add(new FleetStretch(start, cut, fleet));
                start = cut;
                fleet = next;
            }
        }

        return stretches;
    }

    /// <summary>
    /// Reads the completed validations that can be in force at some instant of [from, until): the
    /// latest completed at or before <paramref name="fromUnixMs"/> and every one completed after it
    /// and before <paramref name="untilUnixMs"/>, with their devices per model. With both at
    /// <see cref="long.MaxValue"/> it reads only the latest completed validation, which is all that
    /// ingest needs: it judges the present, and a completion moves the provider's admission epoch,
    /// which makes ingest read the fleet again.
    /// </summary>
    public static async Task<FleetHistory> LoadAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, long fromUnixMs, long untilUnixMs,
        CancellationToken cancellationToken)
    {
        var rows = (await connection.QueryAsync<(long Id, int Inventory, long CompletedMs, long ExpiresMs, string Model, long Devices)>(new CommandDefinition("""
            WITH complete AS (
                SELECT validation_id, inventory_version, completed_at,
                       floor(extract(epoch FROM completed_at) * 1000)::bigint AS completed_ms,
                       floor(extract(epoch FROM expires_at) * 1000)::bigint AS expires_ms
                FROM capacity_validations WHERE provider_id = @providerId AND state = 'complete'),
            chosen AS (
                (SELECT * FROM complete WHERE completed_ms <= @fromUnixMs ORDER BY completed_at DESC, validation_id DESC LIMIT 1)
                UNION ALL
                (SELECT * FROM complete WHERE completed_ms > @fromUnixMs AND completed_ms < @untilUnixMs ORDER BY completed_at, validation_id LIMIT @limit))
            SELECT c.validation_id, c.inventory_version, c.completed_ms, c.expires_ms, n.device_model, sum(n.device_count)::bigint
            FROM chosen c JOIN capacity_inventory_nodes n ON n.provider_id = @providerId AND n.inventory_version = c.inventory_version
            GROUP BY c.validation_id, c.inventory_version, c.completed_at, c.completed_ms, c.expires_ms, n.device_model
            ORDER BY c.completed_at, c.validation_id, n.device_model
            """, new { providerId, fromUnixMs, untilUnixMs, limit = ValidationsMax + 1 }, transaction, cancellationToken: cancellationToken))).ToList();

        var validations = new List<ValidatedFleet>();
        for (int i = 0; i < rows.Count;)
        {
            var first = rows[i];
            var devices = new Dictionary<string, long>(StringComparer.Ordinal);
            for (; i < rows.Count && rows[i].Id == first.Id; i++)
            {
                devices[rows[i].Model] = rows[i].Devices;
            }

            validations.Add(new ValidatedFleet(first.Id, first.Inventory, first.CompletedMs, first.ExpiresMs, devices));
        }

        if (validations.Count > ValidationsMax)
        {
            throw new FleetHistoryLimitExceededException(
                $"{providerId} has more than {ValidationsMax:N0} completed fleet validations in the span read; read a shorter span.");
        }

        // Kept in the store's order (completion to the microsecond, then id), which Of would
        // only repeat at millisecond precision.
        return validations.Count == 0 ? None : new FleetHistory([.. validations]);
    }
}
