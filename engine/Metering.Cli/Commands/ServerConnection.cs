using System.CommandLine;
using System.Diagnostics.CodeAnalysis;
using Google.Rpc;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;

namespace Metering.Cli.Commands;

/// <summary>
/// How a command reaches a running server: its address, the CA that vouches for the server's
/// certificate, and the client certificate for a key pinned to one. Every command that calls the
/// server takes these options and opens its channel here.
/// </summary>
internal sealed class ServerConnection
{
    /// <summary>The environment variable a key comes from when --api-key is not given.</summary>
    public const string ApiKeyVariable = "METERING_API_KEY";

    /// <summary>
    /// The largest message a command takes from the server: the audit report's 16 MiB
    /// (audit.proto, RenderReport), above gRPC's default of 4 MiB. Every other answer is smaller.
    /// </summary>
    public const int ReceiveBytesMax = 16 * 1024 * 1024;

    public Option<ServerList> Server { get; } = CommonOptions.ServerAddress();

    public Option<string?> ApiKey { get; } = new("--api-key") { Description = $"The caller's API key; defaults to {ApiKeyVariable}." };

    public Option<FileInfo?> Ca { get; } = new("--ca")
    {
        Description = "PEM file of the CA that issued the server's certificate; only that CA is trusted (the host name is still checked). Defaults to METERING_CA, else the system's trusted roots.",
    };

    public Option<FileInfo?> ClientCertificate { get; } = new("--client-cert")
    {
        Description = "Client certificate for mutual TLS (PEM, with --client-key; or PKCS#12 alone), for a key pinned to it. Defaults to METERING_CLIENT_CERT.",
    };

    public Option<FileInfo?> ClientKey { get; } = new("--client-key")
    {
        Description = "PEM private key of --client-cert. Defaults to METERING_CLIENT_KEY.",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Server);
        command.Options.Add(ApiKey);
        command.Options.Add(Ca);
        command.Options.Add(ClientCertificate);
        command.Options.Add(ClientKey);
    }

    /// <summary>The key from the option or the environment, or null when neither gives one.</summary>
    public string? ResolveApiKey(ParseResult parse) =>
        (parse.GetValue(ApiKey) ?? Environment.GetEnvironmentVariable(ApiKeyVariable)) is { Length: > 0 } key ? key : null;

    public static Metadata Bearer(string apiKey) => MeteringChannel.Bearer(apiKey);

    /// <summary>
    /// A refusal as one line: status, ErrorInfo reason and the server's message; where the reader
    /// prefers Chinese, the server's zh-CN LocalizedMessage on a second line.
    /// </summary>
    public static string Describe(RpcException e)
    {
        Google.Rpc.Status? status = e.GetRpcStatus();
        string line = $"{e.StatusCode} {status?.GetDetail<ErrorInfo>()?.Reason}: {e.Status.Detail}";
        return Language.PrefersChinese && status?.GetDetail<LocalizedMessage>() is { } localized ? $"{line}\n  {localized.Message}" : line;
    }

    /// <summary>A channel to the server the options name, or false with what is wrong with a certificate option.</summary>
    public bool TryOpen(ParseResult parse, [NotNullWhen(true)] out GrpcChannel? channel, [NotNullWhen(false)] out string? error)
    {
        try
        {
            channel = Open(parse);
            error = null;
            return true;
        }
        catch (ArgumentException e)
        {
            channel = null;
            error = e.Message;
            return false;
        }
    }

    /// <summary>A channel to the server the options name.</summary>
    /// <exception cref="ArgumentException">A certificate file is missing or unreadable; the message says which.</exception>
    public GrpcChannel Open(ParseResult parse) => Open(
        parse.GetValue(Server)!,
        parse.GetValue(Ca)?.FullName ?? Environment.GetEnvironmentVariable("METERING_CA"),
        parse.GetValue(ClientCertificate)?.FullName ?? Environment.GetEnvironmentVariable("METERING_CLIENT_CERT"),
        parse.GetValue(ClientKey)?.FullName ?? Environment.GetEnvironmentVariable("METERING_CLIENT_KEY"));

    /// <summary>A channel as the client library opens it, taking messages up to <see cref="ReceiveBytesMax"/>.</summary>
    public static GrpcChannel Open(ServerList server, string? caPath, string? clientCertificatePath, string? clientKeyPath) =>
        MeteringChannel.Open(new ChannelSettings(server, caPath, clientCertificatePath, clientKeyPath, ReceiveBytesMax));
}
