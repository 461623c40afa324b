using Dapper;
using Metering.Engine.Fixtures;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.IntegrationTests.Storage;

/// <summary>
/// The quoted literal that COPY statements carry instead of a parameter (the chain read names its
/// provider and stream with one), read back by a real PostgreSQL under
/// <c>standard_conforming_strings</c>: every text comes back as itself, and a text built to break
/// out of the quotes stays a value.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SqlLiteralTests(PostgresFixture postgres)
{
    public static TheoryData<string> Texts =>
    [
        "",
        "91440300MA5G00001W",
        "it's",
        "''",
        "'",
        @"back\slash",
        @"\",
        @"\'",
        @"ends with a backslash\",
        "E'\\x41'",
        "line\nbreak\ttab",
        "深圳市南山区",
        "$$dollar$$",
        "x' OR '1'='1",
        "'); DROP TABLE usage_records; --",
    ];

    [Theory]
    [MemberData(nameof(Texts))]
    public async Task A_text_written_as_a_literal_reads_back_as_itself(string text)
    {
        await using var connection = new NpgsqlConnection(await postgres.CreateDatabaseAsync());
        await connection.OpenAsync();
        await connection.ExecuteAsync("SET standard_conforming_strings = on");

        string literal = SqlLiteral.Text(text);

        Assert.Equal(text, await connection.ExecuteScalarAsync<string>($"SELECT {literal}"));
        Assert.True(await connection.ExecuteScalarAsync<bool>($"SELECT {literal} = @text", new { text }));
    }

    [Fact]
    public async Task A_provider_code_built_to_break_out_of_the_quotes_selects_nothing_in_a_copy()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using var connection = new NpgsqlConnection(database);
        await connection.OpenAsync();
        await connection.ExecuteAsync("SET standard_conforming_strings = on");
        long stored = await connection.ExecuteScalarAsync<long>("SELECT count(*) FROM organisations");
        Assert.True(stored > 0);

        using TextReader copy = await connection.BeginTextExportAsync(
            $"COPY (SELECT provider_id FROM organisations WHERE provider_id = {SqlLiteral.Text("x' OR '1'='1")}) TO STDOUT");
        Assert.Equal("", await copy.ReadToEndAsync());
    }

    [Fact]
    public void A_nul_character_is_refused()
    {
        ArgumentException refused = Assert.Throws<ArgumentException>(() => SqlLiteral.Text("a\0b"));

        Assert.Contains("NUL", refused.Message, StringComparison.Ordinal);
    }
}
