using System.CommandLine;
using Metering.Engine.Identity;
using Metering.Server.Access;

namespace Metering.Cli.Commands;

/// <summary>`metering apikey new`: issues a provider API key, storing only its hash.</summary>
internal static class ApiKeyCommand
{
    public static Command Create()
    {
        var provider = new Option<string>("--provider")
        {
            Description = "The provider's 18-character unified social credit code.",
            Required = true,
        };
        var keys = new Option<FileInfo>("--keys")
        {
            Description = "The server's key file; one '<credit code> <sha256 hex>' line is appended.",
            DefaultValueFactory = _ => new FileInfo(Path.Combine(".metering", "api-keys.txt")),
        };
        var create = new Command("new", "Issue a new API key for a provider. The key is printed once; the file keeps only its SHA-256.") { provider, keys };
        create.SetAction(parse =>
        {
            string code = parse.GetValue(provider)!;
            if (!CreditCode.IsValid(code))
            {
                Console.Error.WriteLine($"error: '{code}' is not a valid unified social credit code (18 characters, GB 32100-2015 check character).");
                return 2;
            }

            FileInfo file = parse.GetValue(keys)!;
            file.Directory?.Create();
            string key = ApiKeys.NewKey();
            File.AppendAllText(file.FullName, $"{code} {ApiKeys.Hash(key)}\n");
            Console.WriteLine(key);
            Console.Error.WriteLine($"Issued a key for {code}; its hash is in {file.FullName}. Keep the key: it is not stored.");
            return 0;
        });

        return new Command("apikey", "Provider API keys.") { create };
    }
}
