using System.CommandLine;
using System.Globalization;
using Google.Protobuf;
using Metering.Engine.Access;
using Metering.Engine.Signing;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering key issue|revoke|pin|list`: API keys for every role, managed through a running
/// server by an operator key (AccessService); the server records the caller as the acting
/// operator. `metering key bootstrap` issues the first operator key straight into the database,
/// and only while none exists. `metering key signing` handles the server's signing key file.
/// </summary>
internal static class KeyCommand
{
    /// <summary>Credentials `key list` asks for a page.</summary>
    private const uint ListPageSize = 500;

    public static Command Create()
    {
        var role = new Option<string>("--role")
        {
            Description = "provider (its own data only), operator (registry writes, keys), auditor (reads everything) or settlement (runs batches).",
            Required = true,
        };
        role.AcceptOnlyFromAmong("provider", "operator", "auditor", "settlement");
        var subject = new Option<string>("--subject")
        {
            Description = "Who holds the key: a provider's 18-character credit code, or a person's or system's name.",
            Required = true,
        };
        var label = new Option<string>("--label") { Description = "A note shown in `key list`, for example where the key is deployed.", DefaultValueFactory = _ => "" };
        var pinFile = new Option<FileInfo?>("--pin-cert")
        {
            Description = "Pin the key to this client certificate (PEM or DER): the key then works only over mutual TLS with that certificate.",
        };
        var pinHex = new Option<string?>("--pin-sha256")
        {
            Description = "Pin the key to the client certificate with this SHA-256 (64 hex digits, colons allowed, as `openssl x509 -noout -fingerprint -sha256` prints it).",
        };
        Command issue = ClientCommand.Create("issue", "Issue a new API key through the server (operator keys only). The key is printed once on standard output; the server keeps only its SHA-256.",
            [role, subject, label, pinFile, pinHex], async (parse, call, cancellationToken) =>
            {
                byte[]? pin = ReadPin(parse.GetValue(pinFile), parse.GetValue(pinHex));
                var request = new IssueKeyRequest
                {
                    Role = MessageRole(parse.GetValue(role)!),
                    Subject = parse.GetValue(subject)!,
                    Label = parse.GetValue(label)!,
                    ClientCertificateSha256 = pin is null ? ByteString.Empty : ByteString.CopyFrom(pin),
                };
                IssueKeyResponse issued = await Client(call).IssueKeyAsync(request, call.Headers, cancellationToken: cancellationToken);
                Console.WriteLine(issued.Key);
                Console.Error.WriteLine($"Issued credential {Describe(issued.Credential)}{Pinned(issued.Credential)}. Keep the key: it cannot be shown again.");
                return 0;
            });

        var id = new Argument<long>("credential-id") { Description = "The credential's id, as `key list` shows it." };
        Command revoke = ClientCommand.Create("revoke", "Revoke a credential through the server; calls with its key are refused from now on.", [id],
            async (parse, call, cancellationToken) =>
            {
                Credential revoked = await Client(call).RevokeKeyAsync(new RevokeKeyRequest { CredentialId = parse.GetValue(id) }, call.Headers, cancellationToken: cancellationToken);
                Console.WriteLine($"Revoked credential {Describe(revoked)}.");
                return 0;
            });

        var unpin = new Option<bool>("--none") { Description = "Remove the pin: the key works again with or without a client certificate." };
        Command pinCommand = ClientCommand.Create("pin", "Pin a credential to a client certificate (mutual TLS) through the server, or remove its pin with --none.",
            [id, pinFile, pinHex, unpin], async (parse, call, cancellationToken) =>
            {
                bool none = parse.GetValue(unpin);
                if (none == (parse.GetValue(pinFile) is not null || parse.GetValue(pinHex) is not null))
                {
                    throw new UsageException("give one of --pin-cert, --pin-sha256 or --none");
                }

                var request = new PinKeyRequest { CredentialId = parse.GetValue(id) };
                if (none)
                {
                    request.Unpin = true;
                }
                else
                {
                    request.ClientCertificateSha256 = ByteString.CopyFrom(ReadPin(parse.GetValue(pinFile), parse.GetValue(pinHex))!);
                }

                Credential pinned = await Client(call).PinKeyAsync(request, call.Headers, cancellationToken: cancellationToken);
                Console.WriteLine(pinned.ClientCertificateSha256.IsEmpty
                    ? $"Credential {Describe(pinned)} is no longer pinned."
                    : $"Credential {Describe(pinned)}{Pinned(pinned)}.");
                return 0;
            });

        var output = OutputOption.Create();
        Command list = ClientCommand.Create("list", "List credentials through the server (never their keys).", [output], async (parse, call, cancellationToken) =>
        {
            var rows = new Rows(("id", "credentialId"), ("role", "role"), ("subject", "subject"), ("label", "label"), ("issued", "issuedAt"), ("by", "issuedBy"),
                Column.TableOnly("revoked"), Column.DataOnly("revokedAt"), Column.DataOnly("revokedBy"), ("client cert sha256", "clientCertificateSha256"));
            long after = 0;
            do
            {
                ListKeysResponse page = await Client(call).ListKeysAsync(new ListKeysRequest { AfterCredentialId = after, PageSize = ListPageSize }, call.Headers, cancellationToken: cancellationToken);
                foreach (Credential c in page.Credentials)
                {
                    bool revoked = c.RevokedAtUnixMs != 0;
                    rows.Add(Cell.Number(c.CredentialId, c.CredentialId.ToString(CultureInfo.InvariantCulture)), RoleName(c.Role), c.Subject, c.Label, Cell.Instant(c.IssuedAtUnixMs), c.IssuedBy,
                        revoked ? $"{Local(c.RevokedAtUnixMs)} by {c.RevokedBy}" : "", Cell.Instant(c.RevokedAtUnixMs), revoked ? c.RevokedBy : Cell.Data(null),
                        Convert.ToHexStringLower(c.ClientCertificateSha256.Span));
                }

                after = page.NextAfterCredentialId;
            }
            while (after != 0);

            rows.Write(parse.GetValue(output), Console.Out);
            return 0;
        });

        return new Command("key", "API keys: the first operator key (bootstrap); issue, revoke, pin and list credentials through the server; the server's signing key.")
        {
            Bootstrap(), issue, revoke, pinCommand, list, Signing(),
        };
    }

    /// <summary>
    /// `metering key bootstrap --name NAME`: the one key command that opens the database, because
    /// no key exists yet to call the server with. It refuses while any unrevoked operator key exists.
    /// </summary>
    private static Command Bootstrap()
    {
        var name = new Option<string>("--name")
        {
            Description = "The operator who receives the first operator key; recorded as its subject and its issuer.",
            Required = true,
        };
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        // The key goes to standard output and the log lines too, so only warnings show unless asked.
        var logLevel = CommonOptions.LogLevelOption(Microsoft.Extensions.Logging.LogLevel.Warning);
        var logFormat = CommonOptions.LogFormat();
        var command = new Command("bootstrap",
            "Issue the first operator key, straight into the database (stop `metering serve` first on the embedded database). "
            + "Refused once any unrevoked operator key exists; that operator then issues every other key with `metering key issue`.")
        {
            name, connection, dataDirectory, logLevel, logFormat,
        };
        command.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            try
            {
                var (credential, key) = await new CredentialStore(dataSource, TimeProvider.System).BootstrapOperatorAsync(parse.GetValue(name)!, "bootstrap", cancellationToken);
                Console.WriteLine(key);
                Console.Error.WriteLine($"Issued credential {credential.CredentialId} (operator {credential.Subject}). Keep the key: it cannot be shown again. "
                    + $"Use it as {ServerConnection.ApiKeyVariable} to issue further keys through `metering serve`.");
                return 0;
            }
            catch (CredentialRefusedException refused)
            {
                Console.Error.WriteLine($"refused: {Metering.Server.Access.CredentialRefusals.StatusOf(refused.Reason).Reason}: {refused.Message}");
                return ExitCodes.Refused;
            }
        }, cancellationToken, parse.GetValue(logLevel), parse.GetValue(logFormat)!));
        return command;
    }

    private static AccessService.AccessServiceClient Client(ServerCall call) => new(call.Channel);

    /// <summary>The pin the options give, or null for none; a bad option is bad usage.</summary>
    private static byte[]? ReadPin(FileInfo? file, string? hex) =>
        ClientCertificatePins.TryRead(file, hex, out byte[]? pin, out string? error) ? pin : throw new UsageException(error);

    private static CredentialRole MessageRole(string name) => name switch
    {
        "provider" => CredentialRole.Provider,
        "operator" => CredentialRole.Operator,
        "auditor" => CredentialRole.Auditor,
        "settlement" => CredentialRole.Settlement,
        _ => throw new UsageException($"--role {name} is not provider, operator, auditor or settlement"),
    };

    private static string RoleName(CredentialRole role) => role switch
    {
        CredentialRole.Provider => "provider",
        CredentialRole.Operator => "operator",
        CredentialRole.Auditor => "auditor",
        CredentialRole.Settlement => "settlement",
        _ => role.ToString(),
    };

    private static string Describe(Credential c) => $"{c.CredentialId} ({RoleName(c.Role)} {c.Subject})";

    private static string Pinned(Credential c) => c.ClientCertificateSha256.IsEmpty ? ""
        : $", pinned to the client certificate with SHA-256 {Convert.ToHexStringLower(c.ClientCertificateSha256.Span)}";

    private static string Local(long unixMs) => LocalTime.Minutes(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));

    /// <summary>`metering key signing new|show`: the server's receipt and tree-head key, a file outside the database.</summary>
    private static Command Signing()
    {
        var output = new Option<string>("--out")
        {
            Description = "Where to write the new private key (PEM, mode 0600). An existing file is never overwritten.",
            Required = true,
        };
        var createFormat = OutputOption.Create();
        var create = new Command("new", "Make a new ECDSA P-256 signing key for `metering serve --signing-key`. Prints its public key and key id, to publish.") { output, createFormat };
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
            WritePublic(key.PublicKey, parse.GetValue(createFormat));
            return 0;
        });

        var file = new Argument<string>("file") { Description = "The private key file that `metering serve --signing-key` uses." };
        var showFormat = OutputOption.Create();
        var show = new Command("show", "Print a signing key's public key (PEM) and key id, to publish; --output json or csv gives keyId and publicKeyPem.") { file, showFormat };
        show.SetAction(parse =>
        {
            try
            {
                using ServerSigningKey key = ServerSigningKey.Load(parse.GetValue(file)!);
                WritePublic(key.PublicKey, parse.GetValue(showFormat));
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

    private static void WritePublic(ServerPublicKey key, OutputFormat format)
    {
        if (format != OutputFormat.Table)
        {
            var row = new Rows(Column.DataOnly("keyId"), Column.DataOnly("publicKeyPem"));
            row.Add(key.KeyId, key.Pem);
            row.WriteOne(format, Console.Out);
            return;
        }

        Console.WriteLine($"key id: {key.KeyId}");
        Console.Write(key.Pem);
        Console.WriteLine();
    }

}
