using System.CommandLine;
using System.Security.Cryptography.X509Certificates;
using Metering.Cli.Configuration;
using Metering.Engine.Storage;
using Metering.Engine.Access;
using Metering.Engine.Sandbox;
using Metering.Engine.Signing;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Metering.Server.Telemetry;
using Microsoft.Extensions.Logging;

namespace Metering.Cli.Commands;

/// <summary>`metering serve`: runs the gRPC server until Ctrl+C or SIGTERM.</summary>
internal static partial class ServeCommand
{
    public static Command Create()
    {
        var listen = CommonOptions.ListenAddress("--listen",
            "Address to serve gRPC on: https://IP:PORT with a certificate, or http://IP:PORT without TLS (loopback only unless --insecure).");
        var tlsCertificate = new Option<FileInfo?>("--tls-cert")
        {
            Description = "The server's certificate: a PEM file (with --tls-key) or a PKCS#12 (PFX) file. Defaults to METERING_TLS_CERT.",
        };
        var tlsKey = new Option<FileInfo?>("--tls-key") { Description = "The PEM private key of --tls-cert. Defaults to METERING_TLS_KEY." };
        var tlsPassword = new Option<string?>("--tls-password")
        {
            Description = "Password of the PFX file or of an encrypted PEM key. Prefer METERING_TLS_PASSWORD: a command line is visible to other users.",
        };
        var insecure = new Option<bool>("--insecure")
        {
            Description = "Serve cleartext http:// on a non-loopback address. API keys then cross the network unprotected: only behind a TLS proxy or on a private network.",
        };
        var migrate = new Option<bool>("--migrate")
        {
            Description = "Apply pending migrations, and the runtime role's grants, before serving (always done for the embedded database). The connection must then be the owner's, so serving it needs --allow-privileged-role; prefer `metering db migrate` as the owner and serving as the runtime role.",
        };
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        var signingKey = CommonOptions.SigningKey();
        var runtimeRole = CommonOptions.RuntimeRole();
        var clock = new Option<string>("--clock")
        {
            Description = "system (real time), or simulated: a sandbox's clock, which operators move forward with `metering clock advance`; "
                + "only on a database made with `metering db migrate --sandbox` (sandbox.proto). Defaults to METERING_CLOCK, else system.",
            DefaultValueFactory = _ => Configured("METERING_CLOCK") ?? "system",
        };
        clock.AcceptOnlyFromAmong("system", "simulated");
        var allowPrivileged = new Option<bool>("--allow-privileged-role")
        {
            Description = "Serve even if the connection logs in as a superuser or as the schema's owner, which could drop the evidence guards. Off by default: serve as the runtime role `metering db migrate` creates.",
        };
        var reflection = new Option<bool>("--reflection")
        {
            Description = "Serve gRPC server reflection (grpc.reflection.v1 and v1alpha), without a key, so that grpcurl can list and call the services; `--reflection false` turns it off. Health (grpc.health.v1.Health) is always served, without a key.",
            DefaultValueFactory = _ => true,
        };
        var logLevel = CommonOptions.LogLevelOption(LogLevel.Information);
        logLevel.Description += " Below Information, ASP.NET Core's own messages are logged too.";
        var logFormat = CommonOptions.LogFormat();
        var metricsListen = new Option<Uri?>("--metrics-listen")
        {
            Description = "Serve Prometheus metrics at http://IP:PORT/metrics, on a port of its own (for example http://127.0.0.1:9464); off unless given. "
                + "Loopback only unless --metrics-public: the endpoint has no key. Sets Telemetry:MetricsListen (also METERING__Telemetry__MetricsListen or the settings file).",
            CustomParser = result => AbsoluteUri(result, "--metrics-listen", "http://127.0.0.1:9464"),
        };
        var metricsPublic = new Option<bool?>("--metrics-public")
        {
            Description = "Serve --metrics-listen on a non-loopback address. Anyone who reaches it reads provider ids and volumes: only behind a firewall or on a private network. "
                + "Sets Telemetry:MetricsPublic.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var otlpEndpoint = new Option<Uri?>("--otlp-endpoint")
        {
            Description = "Export traces (a batch commit, a settlement run) and metrics by OTLP to this collector, for example http://127.0.0.1:4317. "
                + "Sets Telemetry:OtlpEndpoint (also METERING__Telemetry__OtlpEndpoint, else OTEL_EXPORTER_OTLP_ENDPOINT); off when none is set.",
            CustomParser = result => AbsoluteUri(result, "--otlp-endpoint", "http://127.0.0.1:4317"),
        };
        var otlpProtocol = new Option<string?>("--otlp-protocol")
        {
            Description = "grpc (the collector's port 4317) or http/protobuf (port 4318). Sets Telemetry:OtlpProtocol (also METERING__Telemetry__OtlpProtocol, else OTEL_EXPORTER_OTLP_PROTOCOL); grpc by default.",
        };
        otlpProtocol.AcceptOnlyFromAmong("grpc", "http/protobuf");
        var requireDurable = new Option<bool?>("--require-durable-replication")
        {
            Description = "Acknowledge nothing unless synchronous_commit is on or remote_apply and a synchronous standby is attached; checked at start and every second, "
                + "refused meanwhile with UNAVAILABLE REPLICATION_NOT_DURABLE, health NOT_SERVING and the gauge metering_replication_not_durable saying why. "
                + "Default: on when the connection string names several hosts (Host=a,b), else off; or $METERING_REQUIRE_DURABLE_REPLICATION (true or false).",
        };
        var namedLimits = MeteringSettings.CreateNamedOptions();
        var configFile = MeteringSettings.ConfigFileOption();
        var sets = MeteringSettings.SetOption();
        var command = new Command("serve", "Run the gRPC server against PostgreSQL: AccessService, IngestService, RawLogService, RegistryService, CapacityService, VoucherService, SettlementService, AuditService, TransparencyService, PublicationService and SandboxService (whose clock moves only on a server run with --clock simulated). Callers authenticate with keys from `metering key issue`; "
            + "PublicationService, grpc.health.v1.Health (SERVING while the database answers at the schema version this engine needs) and server reflection answer without one.")
        {
            listen, tlsCertificate, tlsKey, tlsPassword, insecure, migrate, connection, dataDirectory, signingKey, runtimeRole, clock, allowPrivileged, reflection, logLevel, logFormat,
            metricsListen, metricsPublic, otlpEndpoint, otlpProtocol, configFile, sets, requireDurable,
        };
        foreach (var limit in namedLimits)
        {
            command.Options.Add(limit.Option);
        }

        command.SetAction(async (parse, cancellationToken) =>
        {
            if (parse.GetValue(clock) is not ("system" or "simulated"))
            {
                // METERING_CLOCK reaches here unchecked by the option's parser.
                Console.Error.WriteLine($"error: METERING_CLOCK '{parse.GetValue(clock)}' is neither system nor simulated.");
                return 2;
            }

            // Limits are checked before anything starts, so that a wrong one costs nothing.
            MeteringSettings settings;
            try
            {
                settings = MeteringSettings.Load(parse.GetValue(configFile), parse.GetValue(sets) ?? [],
                    [.. MeteringSettings.Given(parse, namedLimits), .. TelemetryGiven(parse, metricsListen, metricsPublic, otlpEndpoint, otlpProtocol)]);
            }
            catch (SettingsException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }

            // Checked with the other settings (a metrics address off loopback without
            // MetricsPublic is refused there), before the database starts, like a wrong --listen.
            TelemetrySettings telemetry = settings.Telemetry.ToSettings();

            LogLevel level = parse.GetValue(logLevel);
            string format = parse.GetValue(logFormat)!;
            using ILoggerFactory logging = CommonOptions.Logging(level, format);
            ILogger logger = logging.CreateLogger("metering.serve");
            Uri address = parse.GetValue(listen)!;
            string? certificatePath = parse.GetValue(tlsCertificate)?.FullName ?? Configured("METERING_TLS_CERT");
            string? keyPath = parse.GetValue(tlsKey)?.FullName ?? Configured("METERING_TLS_KEY");
            // Refused before the database starts, so that a misconfigured address costs nothing.
            if (TransportRules.Refusal(address, certificatePath is not null, parse.GetValue(insecure)) is { } refusal)
            {
                Console.Error.WriteLine($"error: {refusal}.");
                return 2;
            }

            X509Certificate2? certificate = null;
            if (certificatePath is not null)
            {
                try
                {
                    certificate = ServerCertificate.Load(certificatePath, keyPath, parse.GetValue(tlsPassword) ?? Configured("METERING_TLS_PASSWORD"));
                }
                catch (ArgumentException e)
                {
                    Console.Error.WriteLine($"error: {e.Message}.");
                    return 2;
                }
            }
            else if (keyPath is not null)
            {
                Console.Error.WriteLine("error: --tls-key needs --tls-cert.");
                return 2;
            }

            ServerSigningKey key;
            try
            {
                key = CommonOptions.ResolveSigningKey(parse.GetValue(signingKey),
                    CommonOptions.UsesEmbedded(parse.GetValue(connection)) ? parse.GetValue(dataDirectory) : null, logger);
            }
            catch (SigningKeyException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }

            using ServerSigningKey signing = key;

            string connectionString;
            EmbeddedPostgres? embedded;
            try
            {
                (connectionString, embedded) = await CommonOptions.ResolveDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, logger, cancellationToken, parse.GetValue(runtimeRole));
            }
            catch (EmbeddedPostgresException e)
            {
                // Most often another serve holds the data folder: say so, without a stack trace.
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }

            await using (embedded)
            {
                await using (var dataSource = Database.CreateDataSource(connectionString))
                {
                    var migrator = new Migrator(dataSource, logger) { RuntimeRole = parse.GetValue(runtimeRole)! };
                    if (embedded is not null || parse.GetValue(migrate))
                    {
                        try
                        {
                            await migrator.MigrateAsync(cancellationToken);
                        }
                        catch (SchemaGuardException e)
                        {
                            Console.Error.WriteLine($"error: {e.Message}");
                            return 2;
                        }
                    }

                    int current = await migrator.CurrentVersionAsync(cancellationToken);
                    int shipped = Migrator.Embedded().Count;
                    if (current != shipped)
                    {
                        Console.Error.WriteLine($"error: the database is at schema version {current}, this engine needs {shipped}. Run `metering db migrate` (or pass --migrate).");
                        return 2;
                    }
                }

                // The embedded database was migrated by its superuser just now; serving logs in as
                // the runtime role, like a production deployment does.
                string servingConnection = embedded?.RuntimeConnectionString ?? connectionString;
                bool requireDurableReplication;
                try
                {
                    requireDurableReplication = RequireDurableReplication(parse.GetValue(requireDurable), servingConnection);
                }
                catch (ArgumentException e)
                {
                    Console.Error.WriteLine($"error: {e.Message}");
                    return 2;
                }

                await using MeteringServer? server = await StartServerAsync(new ServerSettings
                {
                    Listen = address,
                    Certificate = certificate,
                    Insecure = parse.GetValue(insecure),
                    ConnectionString = servingConnection,
                    SigningKey = signing,
                    AllowPrivilegedRole = parse.GetValue(allowPrivileged),
                    RequireDurableReplication = requireDurableReplication,
                    Limits = settings.Ingest,
                    CallLimits = settings.Access,
                    CredentialRecheck = settings.CredentialRecheck,
                    Capacity = settings.Capacity,
                    Settlement = settings.Settlement.ToOptions(),
                    Anomalies = settings.Anomalies,
                    Time = parse.GetValue(clock) == "simulated" ? new SimulatedClock(0) : TimeProvider.System,
                    Reflection = parse.GetValue(reflection),
                    Telemetry = telemetry,
                    ConfigureLogging = builder => CommonOptions.ConsoleLines(builder, format)
                        .SetMinimumLevel(level)
                        // One line per request is noise at this volume; the services log what
                        // matters. Asked for below Information, it is what was asked for.
                        .AddFilter("Microsoft.AspNetCore", level < LogLevel.Information ? level : LogLevel.Warning),
                }, cancellationToken);
                if (server is null)
                {
                    return 2;
                }

                int credentials;
                await using (var dataSource = Database.CreateDataSource(servingConnection))
                {
                    credentials = (await new CredentialStore(dataSource, TimeProvider.System).ListAsync(cancellationToken)).Count(c => c.RevokedAt is null);
                }

                LogServing(logger, server.Address, credentials, signing.KeyId);
                if (server.MetricsAddress is { } metricsAddress)
                {
                    LogMetrics(logger, new Uri(metricsAddress, TelemetrySettings.ScrapePath));
                }
                if (server.Services.GetService(typeof(TimeProvider)) is SimulatedClock simulated)
                {
                    LogSandbox(logger, simulated.GetUtcNow(), simulated.OffsetMs);
                }

                if (credentials == 0)
                {
                    LogNoKeys(logger);
                }
                await server.WaitForShutdownAsync(cancellationToken);
            }

            return 0;
        });
        return command;
    }

    private static Uri? AbsoluteUri(System.CommandLine.Parsing.ArgumentResult result, string name, string example)
    {
        string text = result.Tokens.Single().Value;
        if (Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps))
        {
            return uri;
        }

        result.AddError($"{name} '{text}' is not an http:// or https:// address (for example {example}).");
        return null;
    }

    /// <summary>The telemetry options the command line gave, as the Telemetry settings they set.</summary>
    private static IEnumerable<KeyValuePair<string, string?>> TelemetryGiven(ParseResult parse, Option<Uri?> metricsListen, Option<bool?> metricsPublic, Option<Uri?> otlpEndpoint,
        Option<string?> otlpProtocol)
    {
        if (parse.GetValue(metricsListen) is { } listen)
        {
            yield return new("Telemetry:MetricsListen", listen.ToString());
        }

        if (parse.GetResult(metricsPublic) is not null)
        {
            // A bare --metrics-public means true, as a flag does.
            yield return new("Telemetry:MetricsPublic", parse.GetValue(metricsPublic) is false ? "false" : "true");
        }

        if (parse.GetValue(otlpEndpoint) is { } endpoint)
        {
            yield return new("Telemetry:OtlpEndpoint", endpoint.ToString());
        }

        if (parse.GetValue(otlpProtocol) is { } protocol)
        {
            yield return new("Telemetry:OtlpProtocol", protocol);
        }
    }

    private static string? Configured(string variable) => Environment.GetEnvironmentVariable(variable) is { Length: > 0 } value ? value : null;

    private static async Task<MeteringServer?> StartServerAsync(ServerSettings settings, CancellationToken cancellationToken)
    {
        try
        {
            return await MeteringServer.StartAsync(settings, cancellationToken);
        }
        catch (PrivilegedRoleException refused)
        {
            Console.Error.WriteLine($"error: {refused.Message}");
            return null;
        }
        catch (SandboxException refused)
        {
            Console.Error.WriteLine($"error: {refused.Message}");
            return null;
        }
    }

    /// <summary>
    /// --require-durable-replication, else METERING_REQUIRE_DURABLE_REPLICATION, else whether the
    /// connection string names several hosts: a deployment that lists a standby means to survive a
    /// failover, which only synchronous replication makes lossless.
    /// </summary>
    internal static bool RequireDurableReplication(bool? option, string connectionString)
    {
        if (option is bool chosen)
        {
            return chosen;
        }

        string? text = Environment.GetEnvironmentVariable("METERING_REQUIRE_DURABLE_REPLICATION");
        if (!string.IsNullOrWhiteSpace(text))
        {
            return bool.TryParse(text, out bool parsed)
                ? parsed
                : throw new ArgumentException($"$METERING_REQUIRE_DURABLE_REPLICATION is '{text}', neither true nor false");
        }

        string? hosts = new Npgsql.NpgsqlConnectionStringBuilder(connectionString).Host;
        return hosts is not null && hosts.Contains(',', StringComparison.Ordinal);
    }

    [LoggerMessage(EventId = 4001, Level = LogLevel.Information, Message = "Serving gRPC on {Address}; {Keys} credential(s) are active; receipts are signed with key {KeyId}. Ctrl+C stops.")]
    private static partial void LogServing(ILogger logger, Uri address, int keys, string keyId);

    [LoggerMessage(EventId = 4002, Level = LogLevel.Warning, Message = "No credential is active, so every call will be refused. Stop the server and issue the first operator key with: metering key bootstrap --name <name>")]
    private static partial void LogNoKeys(ILogger logger);

    [LoggerMessage(EventId = 4004, Level = LogLevel.Information, Message = "Serving Prometheus metrics on {Address}")]
    private static partial void LogMetrics(ILogger logger, Uri address);

    [LoggerMessage(EventId = 4003, Level = LogLevel.Warning, Message = "SANDBOX: this server runs on a simulated clock, now {Now:yyyy-MM-dd HH:mm:ss}Z ({OffsetMs} ms ahead of real time); operators move it with `metering clock advance`")]
    private static partial void LogSandbox(ILogger logger, DateTimeOffset now, long offsetMs);
}
