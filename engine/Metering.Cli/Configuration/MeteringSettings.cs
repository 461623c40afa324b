using System.CommandLine;
using System.Globalization;
using System.Reflection;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Server.Access;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Memory;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Metering.Cli.Configuration;

/// <summary>
/// The server's limits and defaults, one options class per area, layered as an operator expects:
/// the built-in default, then the optional JSON file (`--config PATH`, else `metering.json` in the
/// working directory), then environment variables (`METERING__Area__Name`, and the older
/// `METERING_…_MAX` names), then the command line (`--set Area:Name=VALUE` and the named options),
/// the later winning. Everything is bound and validated before the server starts anything.
/// </summary>
internal sealed class MeteringSettings
{
    /// <summary>The file read when no --config is given, looked for in the working directory.</summary>
    public const string DefaultFileName = "metering.json";

    private const string EnvironmentPrefix = "METERING__";

    /// <summary>Each area's section name and the options class bound from it.</summary>
    private static readonly (string Area, Type Type)[] Areas =
    [
        ("Ingest", typeof(IngestLimits)),
        ("Access", typeof(CallLimits)),
        ("Capacity", typeof(CapacitySettings)),
        ("Settlement", typeof(SettlementSettings)),
        ("Anomalies", typeof(DetectorSettings)),
        ("Telemetry", typeof(TelemetryOptions)),
    ];

    /// <summary>Access settings that are not part of <see cref="CallLimits"/>.</summary>
    private const string CredentialRecheckKey = "Access:CredentialRecheckMs";

    /// <summary>The older environment variables, kept working, and the keys they set.</summary>
    private static readonly (string Variable, string Key)[] LegacyVariables =
    [
        ("METERING_STREAMS_PER_KEY_MAX", "Access:StreamsPerKeyMax"),
        ("METERING_STREAM_IDS_PER_DAY_MAX", "Access:StreamIdsPerDayMax"),
        ("METERING_STREAM_OPENS_PER_MINUTE_MAX", "Access:StreamOpensPerMinuteMax"),
        ("METERING_AUDIT_CALLS_IN_FLIGHT_MAX", "Access:AuditCallsInFlightMax"),
        ("METERING_UNKNOWN_KEYS_PER_PEER_PER_MINUTE_MAX", "Access:UnknownKeysPerPeerPerMinuteMax"),
        ("METERING_AUTH_CACHE_MS", "Access:AuthenticationCacheMs"),
        ("METERING_CREDENTIAL_RECHECK_MS", CredentialRecheckKey),
    ];

    /// <summary>The variables every OpenTelemetry SDK reads, taken as Telemetry settings below METERING__Telemetry__….</summary>
    private static readonly (string Variable, string Key)[] OpenTelemetryVariables =
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "Telemetry:OtlpEndpoint"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "Telemetry:OtlpProtocol"),
    ];

    /// <summary>`serve`'s named limit options, and the keys they set (proto/metering/v1/limits.md).</summary>
    public static readonly (string Option, string Key, string Description)[] NamedOptions =
    [
        ("--streams-per-key", "Access:StreamsPerKeyMax", "Ingest streams one caller holds open at once."),
        ("--stream-ids-per-day", "Access:StreamIdsPerDayMax", "Distinct stream ids one caller opens per day (Asia/Shanghai)."),
        ("--stream-opens-per-minute", "Access:StreamOpensPerMinuteMax", "Stream opens one caller makes per minute."),
        ("--audit-calls-in-flight", "Access:AuditCallsInFlightMax", "Audit calls one caller has running at once."),
        ("--unknown-keys-per-peer-per-minute", "Access:UnknownKeysPerPeerPerMinuteMax", "Look-ups of keys not seen valid lately, per client IP per minute."),
        ("--auth-cache-ms", "Access:AuthenticationCacheMs", "How long a key look-up is reused, in ms (0 turns the cache off)."),
        ("--credential-recheck-ms", CredentialRecheckKey, $"How often an open stream looks its key up again, in ms (0 to {CredentialRecheckPolicy.IntervalMax.TotalMilliseconds:0})."),
    ];

    /// <summary>Settings that stay command-line options and environment variables, shown (masked where secret) so that `config show` is the whole picture.</summary>
    private static readonly (string Key, string Variable, bool Secret)[] Shown =
    [
        ("Server:Connection", "METERING_CONNECTION", true),
        ("Server:RuntimeRole", "METERING_RUNTIME_ROLE", false),
        ("Server:SigningKey", "METERING_SIGNING_KEY", false),
        ("Server:TlsCert", "METERING_TLS_CERT", false),
        ("Server:TlsKey", "METERING_TLS_KEY", false),
        ("Server:TlsPassword", "METERING_TLS_PASSWORD", true),
        ("Server:Clock", "METERING_CLOCK", false),
        ("Client:Server", "METERING_SERVER", false),
        ("Client:ApiKey", "METERING_API_KEY", true),
        ("Client:Ca", "METERING_CA", false),
    ];

    private readonly IConfigurationRoot _root;
    private readonly string[] _sourceNames;

    private MeteringSettings(IConfigurationRoot root, string[] sourceNames)
    {
        _root = root;
        _sourceNames = sourceNames;
    }

    public required IngestLimits Ingest { get; init; }

    public required CallLimits Access { get; init; }

    public required CredentialRecheckPolicy CredentialRecheck { get; init; }

    public required CapacitySettings Capacity { get; init; }

    public required SettlementSettings Settlement { get; init; }

    public required DetectorSettings Anomalies { get; init; }

    public required TelemetryOptions Telemetry { get; init; }

    /// <summary>`--config PATH`: the JSON file of settings.</summary>
    public static Option<FileInfo?> ConfigFileOption() => new("--config")
    {
        Description = $"A JSON file of settings ({{\"Ingest\": {{\"BatchRecordsMax\": 5000}}}}); without it, {DefaultFileName} in the working directory if there is one. "
            + "Environment variables METERING__Area__Name override the file, and the command line overrides both. `metering config show` lists every setting.",
    };

    /// <summary>`--set Area:Name=VALUE`, repeatable: any setting on the command line.</summary>
    public static Option<string[]> SetOption() => new("--set")
    {
        Description = "Set one setting on the command line, as Area:Name=VALUE (for example Ingest:BatchRecordsMax=5000); repeatable. `metering config show` lists them.",
        AllowMultipleArgumentsPerToken = false,
    };

    /// <summary>The named limit options, to add to a command and read back with <see cref="Load"/>.</summary>
    public static List<(string Key, Option<int?> Option)> CreateNamedOptions() =>
        [.. NamedOptions.Select(n => (n.Key, new Option<int?>(n.Option)
        {
            Description = $"{n.Description} Sets {n.Key} (also METERING__{n.Key.Replace(":", "__", StringComparison.Ordinal)} or {LegacyVariables.Single(l => l.Key == n.Key).Variable}); `metering config show` gives the default.",
        }))];

    /// <summary>The named options the command line gave, as settings.</summary>
    public static IEnumerable<KeyValuePair<string, string?>> Given(ParseResult parse, List<(string Key, Option<int?> Option)> named) =>
        named.Where(n => parse.GetValue(n.Option) is not null)
            .Select(n => new KeyValuePair<string, string?>(n.Key, parse.GetValue(n.Option)!.Value.ToString(CultureInfo.InvariantCulture)));

    /// <summary>
    /// Reads, binds and validates every area. Throws <see cref="SettingsException"/> naming the
    /// setting and where its value came from when a key is unknown or a value is out of range.
    /// </summary>
    public static MeteringSettings Load(FileInfo? file, IEnumerable<string> sets, IEnumerable<KeyValuePair<string, string?>> namedOptions)
    {
        var builder = new ConfigurationBuilder();
        var names = new List<string>();
        builder.Add(new MemoryConfigurationSource { InitialData = Defaults() });
        names.Add("default");

        string? path = file?.FullName;
        if (path is not null && !File.Exists(path))
        {
            throw new SettingsException($"--config {path}: no such file.");
        }

        path ??= File.Exists(Path.Combine(Directory.GetCurrentDirectory(), DefaultFileName)) ? Path.Combine(Directory.GetCurrentDirectory(), DefaultFileName) : null;
        if (path is not null)
        {
            builder.AddJsonFile(path, optional: false, reloadOnChange: false);
            names.Add($"file {path}");
        }

        foreach (var (variable, key) in LegacyVariables.Concat(OpenTelemetryVariables))
        {
            if (Environment.GetEnvironmentVariable(variable) is { Length: > 0 } value)
            {
                builder.Add(new MemoryConfigurationSource { InitialData = [new(key, value)] });
                names.Add($"env {variable}");
            }
        }

        builder.AddEnvironmentVariables(EnvironmentPrefix);
        names.Add("env METERING__");

        var commandLine = new List<KeyValuePair<string, string?>>(namedOptions);
        foreach (string set in sets)
        {
            int equals = set.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0)
            {
                throw new SettingsException($"--set '{set}' is not Area:Name=VALUE (for example Ingest:BatchRecordsMax=5000).");
            }

            commandLine.Add(new(set[..equals].Trim(), set[(equals + 1)..].Trim()));
        }

        builder.Add(new MemoryConfigurationSource { InitialData = commandLine });
        names.Add("command line");

        IConfigurationRoot root;
        try
        {
            root = builder.Build();
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or IOException)
        {
            throw new SettingsException($"{path}: {e.Message}");
        }

        var settings = new MeteringSettings(root, [.. names])
        {
            Ingest = new IngestLimits(),
            Access = new CallLimits(),
            Capacity = new CapacitySettings(),
            Settlement = new SettlementSettings(),
            Anomalies = new DetectorSettings(),
            Telemetry = new TelemetryOptions(),
            CredentialRecheck = CredentialRecheckPolicy.Default,
        };
        settings.RefuseUnknownKeys();
        return settings.Bind();
    }

    /// <summary>Every setting, its effective value (secrets masked) and where it came from, in key order.</summary>
    public IReadOnlyList<(string Key, string Value, string Source)> Describe()
    {
        var rows = new List<(string, string, string)>();
        foreach (string key in KnownKeys().Order(StringComparer.Ordinal))
        {
            rows.Add((key, _root[key] ?? "", SourceOf(key)));
        }

        foreach (var (key, variable, secret) in Shown)
        {
            string? value = Environment.GetEnvironmentVariable(variable);
            rows.Add(value is { Length: > 0 }
                ? (key, secret ? Mask(key, value) : value, $"env {variable}")
                : (key, "", "unset (command-line option or env " + variable + ")"));
        }

        return rows;
    }

    /// <summary>A secret shown as present but unreadable: a connection string keeps all but its password.</summary>
    internal static string Mask(string key, string value)
    {
        if (key == "Server:Connection")
        {
            try
            {
                var connection = new NpgsqlConnectionStringBuilder(value);
                if (connection.Password is not null)
                {
                    connection.Password = "***";
                }

                return connection.ConnectionString;
            }
            catch (ArgumentException)
            {
                // A string Npgsql cannot read could still hold a password anywhere in it.
                return "***";
            }
        }

        return "***";
    }

    private MeteringSettings Bind()
    {
        var services = new ServiceCollection();
        services.AddOptions<IngestLimits>().Bind(_root.GetSection("Ingest")).Validate(Valid<IngestLimits>(l => l.Validate()), "Ingest");
        services.AddOptions<CallLimits>().Bind(_root.GetSection("Access")).Validate(Valid<CallLimits>(l => l.Validate()), "Access");
        services.AddOptions<CapacitySettings>().Bind(_root.GetSection("Capacity")).Validate(Valid<CapacitySettings>(l => l.Validate()), "Capacity");
        services.AddOptions<SettlementSettings>().Bind(_root.GetSection("Settlement")).Validate(Valid<SettlementSettings>(l => l.Validate()), "Settlement");
        services.AddOptions<DetectorSettings>().Bind(_root.GetSection("Anomalies")).Validate(Valid<DetectorSettings>(l => l.Validate()), "Anomalies");
        services.AddOptions<TelemetryOptions>().Bind(_root.GetSection("Telemetry")).Validate(Valid<TelemetryOptions>(l => l.Validate()), "Telemetry");
        using ServiceProvider provider = services.BuildServiceProvider();
        try
        {
            IngestLimits ingest = provider.GetRequiredService<IOptions<IngestLimits>>().Value;
            CallLimits access = provider.GetRequiredService<IOptions<CallLimits>>().Value;
            CapacitySettings capacity = provider.GetRequiredService<IOptions<CapacitySettings>>().Value;
            SettlementSettings settlement = provider.GetRequiredService<IOptions<SettlementSettings>>().Value;
            DetectorSettings anomalies = provider.GetRequiredService<IOptions<DetectorSettings>>().Value;
            TelemetryOptions telemetry = provider.GetRequiredService<IOptions<TelemetryOptions>>().Value;
            int recheckMs = _root.GetValue<int>(CredentialRecheckKey);
            var recheck = new CredentialRecheckPolicy(TimeSpan.FromMilliseconds(recheckMs));
            try
            {
                recheck.Validate();
            }
            catch (ArgumentException e)
            {
                throw Refusal(CredentialRecheckKey, e);
            }

            return new MeteringSettings(_root, _sourceNames) { Ingest = ingest, Access = access, Capacity = capacity, Settlement = settlement, Anomalies = anomalies, Telemetry = telemetry,
                CredentialRecheck = recheck };
        }
        catch (ValidationFailure failure)
        {
            throw Refusal(failure.Key, (ArgumentException)failure.InnerException!);
        }
        catch (InvalidOperationException e)
        {
            // The binder names the key whose text is not of its type ("Failed to convert configuration value at 'Ingest:BatchRecordsMax'").
            string key = KnownKeys().FirstOrDefault(k => e.Message.Contains($"'{k}'", StringComparison.OrdinalIgnoreCase)) ?? "?";
            throw new SettingsException($"setting {key} = '{_root[key]}' (from {SourceOf(key)}) is not a {TypeOf(key)}.");
        }
    }

    private static Func<T, bool> Valid<T>(Action<T> validate) => value =>
    {
        try
        {
            validate(value);
            return true;
        }
        catch (ArgumentException e)
        {
            string area = Areas.Single(a => a.Type == typeof(T)).Area;
            throw new ValidationFailure($"{area}:{e.ParamName}", e);
        }
    };

    /// <summary>Carries a failed check out of the options factory with the key it concerns.</summary>
    private sealed class ValidationFailure(string key, ArgumentException inner) : Exception(inner.Message, inner)
    {
        public string Key { get; } = key;
    }

    private SettingsException Refusal(string key, ArgumentException e)
    {
        string reason = e.ParamName is { } name ? e.Message.Replace($" (Parameter '{name}')", "", StringComparison.Ordinal) : e.Message;
        reason = reason.Split('\n')[0].Trim();
        return new SettingsException($"setting {key} = '{_root[key]}' (from {SourceOf(key)}) is refused: {reason}");
    }

    private void RefuseUnknownKeys()
    {
        HashSet<string> known = KnownKeys();
        var knownAreas = Areas.Select(a => a.Area).ToHashSet(StringComparer.OrdinalIgnoreCase);
        foreach (var (key, value) in _root.AsEnumerable())
        {
            if (value is null)
            {
                continue;
            }

            if (!known.Contains(key))
            {
                string area = key.Split(':')[0];
                throw new SettingsException(knownAreas.Contains(area)
                    ? $"setting {key} (from {SourceOf(key)}) is unknown; {area} has {string.Join(", ", known.Where(k => k.StartsWith(area + ":", StringComparison.OrdinalIgnoreCase)).Order(StringComparer.Ordinal))}."
                    : $"setting {key} (from {SourceOf(key)}) is unknown; the areas are {string.Join(", ", Areas.Select(a => a.Area))}.");
            }
        }
    }

    private string SourceOf(string key)
    {
        for (int i = _root.Providers.Count() - 1; i >= 0; i--)
        {
            if (_root.Providers.ElementAt(i).TryGet(key, out _))
            {
                return _sourceNames[i] == "env " + EnvironmentPrefix ? $"env {EnvironmentPrefix}{key.Replace(":", "__", StringComparison.Ordinal)}" : _sourceNames[i];
            }
        }

        return "default";
    }

    private static string TypeOf(string key)
    {
        string[] parts = key.Split(':');
        PropertyInfo? property = Areas.FirstOrDefault(a => a.Area == parts[0]).Type?.GetProperty(parts[^1]);
        return property?.PropertyType switch
        {
            Type t when t == typeof(TimeSpan) => "time span (d.hh:mm:ss)",
            Type t when t == typeof(DateTimeOffset) => "date and time with offset",
            Type t when t == typeof(bool) => "true or false",
            _ => "whole number",
        };
    }

    private static HashSet<string> KnownKeys()
    {
        var keys = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { CredentialRecheckKey };
        foreach (var (area, type) in Areas)
        {
            foreach (PropertyInfo property in Settable(type))
            {
                keys.Add($"{area}:{property.Name}");
            }
        }

        return keys;
    }

    /// <summary>Every setting there is, `Area:Name`, with its built-in default as `config show` prints it: what README's Configuration section must list.</summary>
    internal static IReadOnlyDictionary<string, string?> DefaultsByKey() => Defaults();

    private static IEnumerable<PropertyInfo> Settable(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.SetMethod is { IsPublic: true } && p.GetIndexParameters().Length == 0);

    private static Dictionary<string, string?> Defaults()
    {
        var defaults = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase)
        {
            [CredentialRecheckKey] = CredentialRecheckPolicy.Default.Interval.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture),
        };
        foreach (var (area, type) in Areas)
        {
            object instance = Activator.CreateInstance(type)!;
            foreach (PropertyInfo property in Settable(type))
            {
                defaults[$"{area}:{property.Name}"] = property.GetValue(instance) switch
                {
                    TimeSpan span => span.ToString("c", CultureInfo.InvariantCulture),
                    bool flag => flag ? "true" : "false",
                    DateTimeOffset instant => instant.ToString("yyyy-MM-dd'T'HH:mm:sszzz", CultureInfo.InvariantCulture),
                    IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
                    var other => other?.ToString(),
                };
            }
        }

        return defaults;
    }
}

/// <summary>A setting that is unknown, unreadable or out of range: exit 2, before anything starts.</summary>
internal sealed class SettingsException(string message) : Exception(message);
