using System.Collections.Frozen;
using System.Globalization;
using Dapper;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>
/// A provider's fleet per device model, as ingest bounds concurrent usage with it. For each model
/// the figure comes from the first source that covers that model:
/// <list type="number">
/// <item>the validation in force (<see cref="FleetHistory"/>, the one definition of it), where its
/// inventory holds the model;</item>
/// <item>the devices the commissioned verifier confirmed for the model (the verifier's parts of
/// the latest verification of its admitted applications, <c>verification_parts</c>): the figure
/// for Ascend, AMD and the other models the probe cannot reach. Where two admitted applications
/// confirm the same model, the larger count is taken once, as for declarations;</item>
/// <item>the devices its admitted applications declared (those passed commissioned verification).
/// Where two admitted applications declare the same site and model, the larger count is taken
/// once: a second service item is offered on the same platform, not on new devices.</item>
/// </list>
/// A model no source covers has a fleet of 0. So a provider that validates its NVIDIA nodes keeps
/// its verifier-confirmed (or else declared) Ascend devices as their bound, instead of 0, and a
/// provider without any validation or verifier's part is bounded by its declaration.
///
/// Ingest judges a commit against the fleet in force at the commit (<see cref="DevicesOf"/>);
/// the audit's capacity detector judges each instant of usage against the validation in force at
/// that instant, and reports usage while none was in force apart (see
/// <c>Audit/Anomalies/AnomalyDetectors.Capacity.cs</c>).
/// </summary>
public sealed class FleetSnapshot
{
    /// <summary>What <see cref="DevicesOf"/> names as the source of the fallback figure.</summary>
    public const string DeclaredSource = "the devices its admitted applications declared";

    /// <summary>What <see cref="DevicesOf"/> names as the source of the commissioned verifier's figure, followed by the application.</summary>
    public const string VerifierSource = "the devices the commissioned verifier confirmed";

    private readonly FrozenDictionary<string, long> _declared;

    private readonly FrozenDictionary<string, (long Devices, string Source)> _confirmed;

    internal FleetSnapshot(FleetHistory history, IDictionary<string, long> declared, IDictionary<string, (long Devices, string Source)>? confirmed = null)
    {
        History = history;
        _declared = declared.ToFrozenDictionary(StringComparer.Ordinal);
        _confirmed = (confirmed ?? new Dictionary<string, (long, string)>()).ToFrozenDictionary(StringComparer.Ordinal);
    }

    public static FleetSnapshot Empty { get; } = new(FleetHistory.None, new Dictionary<string, long>());

    /// <summary>
    /// The devices of a model the commissioned verifier confirmed in the latest verification of an
    /// admitted application, with the source named (the application), or null where it confirmed none.
    /// </summary>
    public (long Devices, string Source)? ConfirmedOf(string model) => _confirmed.TryGetValue(model, out var confirmed) ? confirmed : null;

    /// <summary>The completed validations read, with which one is in force when.</summary>
    public FleetHistory History { get; }

    /// <summary>The devices of a model the admitted applications declared, as the registry stood when read.</summary>
    public long DeclaredOf(string model) => _declared.GetValueOrDefault(model);

    /// <summary>The declared devices per model.</summary>
    public IReadOnlyDictionary<string, long> Declared => _declared;

    /// <summary>
    /// The devices of a model in the fleet at a moment, and where that figure comes from: the
    /// validation in force where its inventory holds the model, else the devices the commissioned
    /// verifier confirmed for it, else the declared devices (0 for a model none holds). Ingest
    /// calls it once per model a commit touches, not per record.
    /// </summary>
    public (long Devices, string Source) DevicesOf(string model, long nowUnixMs) =>
        History.InForceAt(nowUnixMs) is { } validation && validation.Devices.TryGetValue(model, out long validated)
            ? (validated, validation.Name)
            : ConfirmedOf(model) ?? (DeclaredOf(model), DeclaredSource);

    /// <summary>The fleet as ingest needs it: only the latest completed validation (see <see cref="FleetHistory.LoadAsync"/>).</summary>
    internal static Task<FleetSnapshot> LoadAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId) =>
        LoadAsync(connection, transaction, providerId, long.MaxValue, long.MaxValue, CancellationToken.None);

    /// <summary>The fleet with every validation that can be in force at some instant of [from, until).</summary>
    public static async Task<FleetSnapshot> LoadAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, long fromUnixMs, long untilUnixMs,
        CancellationToken cancellationToken)
    {
        FleetHistory history = await FleetHistory.LoadAsync(connection, transaction, providerId, fromUnixMs, untilUnixMs, cancellationToken);
        var declared = await connection.QueryAsync<(string Model, long Devices)>(new CommandDefinition("""
            SELECT device_model, sum(devices)::bigint FROM (
                SELECT c.site, c.device_model, max(c.device_count) AS devices
                FROM application_capacity c JOIN applications a ON a.provider_id = c.provider_id AND a.application_id = c.application_id
                WHERE c.provider_id = @providerId AND a.state = 'admitted'
                GROUP BY c.site, c.device_model) s
            GROUP BY device_model
            """, new { providerId }, transaction, cancellationToken: cancellationToken));
        // The verifier's parts of each admitted application's latest verification; per model the
        // largest count, named by its application (the lowest id among equals).
        var confirmed = await connection.QueryAsync<(string Model, long Devices, long ApplicationId)>(new CommandDefinition("""
            SELECT DISTINCT ON (p.device_model) p.device_model, p.devices, p.application_id
            FROM verification_parts p JOIN applications a ON a.provider_id = p.provider_id AND a.application_id = p.application_id
            WHERE p.provider_id = @providerId AND a.state = 'admitted' AND p.source = 'verifier'
              AND p.stage_no = (SELECT max(s.stage_no) FROM application_stages s
                                WHERE s.provider_id = p.provider_id AND s.application_id = p.application_id AND s.stage = 'verification')
            ORDER BY p.device_model, p.devices DESC, p.application_id
            """, new { providerId }, transaction, cancellationToken: cancellationToken));
        return new FleetSnapshot(history, declared.ToDictionary(d => d.Model, d => d.Devices),
            confirmed.ToDictionary(c => c.Model, c => (c.Devices, string.Create(CultureInfo.InvariantCulture, $"{VerifierSource} for application {c.ApplicationId}"))));
    }
}
