using System.Globalization;
using System.Text;
using Npgsql;
using Parquet;
using Parquet.Schema;

namespace Metering.Engine.Audit;

/// <summary>The file formats of an export.</summary>
public enum ExportFormat
{
    /// <summary>RFC 4180 CSV, UTF-8, a header line, LF line ends.</summary>
    Csv,

    /// <summary>Apache Parquet, one row group per <see cref="UsageExport.RowGroupRecords"/> records.</summary>
    Parquet,
}

/// <summary>
/// Exports the records an audit filter selects, one row per record, ordered by provider, stream
/// and sequence, with every stored column: the attested fields, the derived usage (nPFh and
/// device-milliseconds, integers), the catalog version, the chain hash in hex and the commit
/// time, then the optional SM activity (empty where the record reported none), last so that the
/// columns before it keep their places. Times are Unix milliseconds and UTC instants: ISO 8601 with a Z in CSV, and in Parquet
/// the TIMESTAMP logical type in milliseconds with isAdjustedToUTC, plus the file's key-value
/// metadata <see cref="ZoneKey"/> saying so. Programme days elsewhere are Asia/Shanghai dates;
/// an instant has no zone to convert.
/// </summary>
public sealed class UsageExport(NpgsqlDataSource dataSource)
{
    /// <summary>Most records one export writes; a larger one is refused, never cut short silently.</summary>
    public const long RecordsMax = 50_000_000;

    /// <summary>Records held in memory per Parquet row group.</summary>
    public const int RowGroupRecords = 65_536;

    /// <summary>The key of the Parquet file metadata that states the zone of the file's times.</summary>
    public const string ZoneKey = "metering.time_zone";

    /// <summary>The value of <see cref="ZoneKey"/>.</summary>
    public const string ZoneValue = "UTC: start_at, end_at and committed_at are instants (TIMESTAMP, millisecond, isAdjustedToUTC); start_unix_ms and end_unix_ms are Unix milliseconds";

    public static readonly string[] Columns =
    [
        "provider_id", "stream_id", "sequence", "job_id", "holder_code", "device_model", "device_count", "share_numerator", "share_denominator",
        "start_unix_ms", "end_unix_ms", "start_at", "end_at", "site", "device_uuids", "energy_mwh", "catalog_version", "usage_npfh", "device_ms",
        "chain_hash", "committed_at", "sm_active_bp",
    ];

    /// <summary>Writes the export and returns the number of records. Parquet needs a seekable stream.</summary>
    public async Task<long> WriteAsync(UsageFilter filter, ExportFormat format, Stream output, CancellationToken cancellationToken)
    {
        filter.Validate();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        long count;
        await using (var counting = new NpgsqlCommand($"SELECT count(*) FROM usage_records WHERE {Positional(UsageFilter.Where)}", connection, transaction))
        {
            count = await counting.Bind(filter).ExecuteScalarAsync(cancellationToken) is long n ? n : 0;
        }
        if (count > RecordsMax)
        {
            throw new AuditLimitExceededException($"The filter selects {count:N0} records; one export writes at most {RecordsMax:N0}. Narrow the period or the filter.");
        }

        await using var command = new NpgsqlCommand($"""
            SELECT provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, array_to_string(device_uuids, ';'), energy_mwh, catalog_version, usage_npfh, chain_hash, committed_at, sm_active_bp
            FROM usage_records WHERE {Positional(UsageFilter.Where)}
            ORDER BY provider_id, stream_id COLLATE "C", sequence
            """, connection, transaction);
        command.Bind(filter);
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(System.Data.CommandBehavior.SequentialAccess, cancellationToken);
        long written = format == ExportFormat.Csv
            ? await WriteCsvAsync(reader, output, cancellationToken)
            : await WriteParquetAsync(reader, output, cancellationToken);
        await reader.CloseAsync();
        await transaction.CommitAsync(cancellationToken);
        return written;
    }

    /// <summary>One record as the export sees it.</summary>
    private readonly record struct Row(
        string ProviderId, string StreamId, long Sequence, string JobId, string HolderCode, string DeviceModel, int DeviceCount, int ShareNumerator,
        int ShareDenominator, long StartMs, long EndMs, string Site, string? DeviceUuids, long? EnergyMwh, string CatalogVersion, long UsageNpfh,
        long DeviceMs, string ChainHash, long CommittedMs, int? SmActiveBp);

    private static async Task<Row?> ReadAsync(NpgsqlDataReader reader, CancellationToken cancellationToken)
    {
        if (!await reader.ReadAsync(cancellationToken))
        {
            return null;
        }

        string provider = reader.GetString(0);
        string stream = reader.GetString(1);
        long sequence = reader.GetInt64(2);
        string job = reader.GetString(3);
        string holder = reader.GetString(4);
        string model = reader.GetString(5);
        int count = reader.GetInt32(6);
        int numerator = reader.GetInt32(7);
        int denominator = reader.GetInt32(8);
        long start = Storage.UnixMs.FromDateTime(reader.GetDateTime(9));
        long end = Storage.UnixMs.FromDateTime(reader.GetDateTime(10));
        string site = reader.GetString(11);
        string? uuids = reader.IsDBNull(12) ? null : reader.GetString(12);
        long? energy = reader.IsDBNull(13) ? null : reader.GetInt64(13);
        string catalog = reader.GetString(14);
        long usage = reader.GetInt64(15);
        string hash = Convert.ToHexStringLower(reader.GetFieldValue<byte[]>(16));
        long committed = Storage.UnixMs.FromDateTime(reader.GetDateTime(17));
        int? smActiveBp = reader.IsDBNull(18) ? null : reader.GetInt32(18);
        long deviceMs = UsageQueries.DeviceMs((uint)count, (uint)numerator, (uint)denominator, end - start);
        return new Row(provider, stream, sequence, job, holder, model, count, numerator, denominator, start, end, site, uuids, energy, catalog, usage, deviceMs, hash, committed, smActiveBp);
    }

    private static async Task<long> WriteCsvAsync(NpgsqlDataReader reader, Stream output, CancellationToken cancellationToken)
    {
        await using var writer = new StreamWriter(output, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false), 64 * 1024, leaveOpen: true) { NewLine = "\n" };
        await writer.WriteLineAsync(string.Join(',', Columns));
        long count = 0;
        var line = new StringBuilder(512);
        while (await ReadAsync(reader, cancellationToken) is { } r)
        {
            line.Clear();
            Append(line, r.ProviderId).Append(',');
            Append(line, r.StreamId).Append(',');
            line.Append(r.Sequence.ToString(CultureInfo.InvariantCulture)).Append(',');
            Append(line, r.JobId).Append(',');
            Append(line, r.HolderCode).Append(',');
            Append(line, r.DeviceModel).Append(',');
            line.Append(CultureInfo.InvariantCulture, $"{r.DeviceCount},{r.ShareNumerator},{r.ShareDenominator},{r.StartMs},{r.EndMs},{Iso(r.StartMs)},{Iso(r.EndMs)},");
            Append(line, r.Site).Append(',');
            Append(line, r.DeviceUuids ?? "").Append(',');
            line.Append(r.EnergyMwh?.ToString(CultureInfo.InvariantCulture) ?? "").Append(',');
            Append(line, r.CatalogVersion).Append(',');
            line.Append(CultureInfo.InvariantCulture, $"{r.UsageNpfh},{r.DeviceMs},{r.ChainHash},{Iso(r.CommittedMs)},{r.SmActiveBp?.ToString(CultureInfo.InvariantCulture)}");
            await writer.WriteLineAsync(line, cancellationToken);
            count++;
        }

        return count;
    }

    /// <summary>A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).</summary>
    private static StringBuilder Append(StringBuilder line, string value)
    {
        if (value.AsSpan().IndexOfAny(",\"\r\n") < 0)
        {
            return line.Append(value);
        }

        return line.Append('"').Append(value.Replace("\"", "\"\"", StringComparison.Ordinal)).Append('"');
    }

    private static string Iso(long unixMs) => DateTimeOffset.FromUnixTimeMilliseconds(unixMs).UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);

    private static readonly DataField<string> ProviderField = new("provider_id");
    private static readonly DataField<string> StreamField = new("stream_id");
    private static readonly DataField<long> SequenceField = new("sequence");
    private static readonly DataField<string> JobField = new("job_id");
    private static readonly DataField<string> HolderField = new("holder_code");
    private static readonly DataField<string> ModelField = new("device_model");
    private static readonly DataField<int> CountField = new("device_count");
    private static readonly DataField<int> NumeratorField = new("share_numerator");
    private static readonly DataField<int> DenominatorField = new("share_denominator");
    private static readonly DataField<long> StartMsField = new("start_unix_ms");
    private static readonly DataField<long> EndMsField = new("end_unix_ms");
    private static readonly DateTimeDataField StartField = Instant("start_at");
    private static readonly DateTimeDataField EndField = Instant("end_at");
    private static readonly DataField<string> SiteField = new("site");
    private static readonly DataField<string> UuidsField = new("device_uuids");
    private static readonly DataField<long?> EnergyField = new("energy_mwh");
    private static readonly DataField<string> CatalogField = new("catalog_version");
    private static readonly DataField<long> UsageField = new("usage_npfh");
    private static readonly DataField<long> DeviceMsField = new("device_ms");
    private static readonly DataField<string> HashField = new("chain_hash");
    private static readonly DateTimeDataField CommittedField = Instant("committed_at");
    private static readonly DataField<int?> SmActiveField = new("sm_active_bp");

    private static DateTimeDataField Instant(string name) => new(name, DateTimeFormat.Timestamp, isAdjustedToUTC: true, unit: DateTimeTimeUnit.Millis);

    public static ParquetSchema Schema { get; } = new(
        ProviderField, StreamField, SequenceField, JobField, HolderField, ModelField, CountField, NumeratorField, DenominatorField, StartMsField, EndMsField,
        StartField, EndField, SiteField, UuidsField, EnergyField, CatalogField, UsageField, DeviceMsField, HashField, CommittedField, SmActiveField);

    /// <summary>
    /// Strings that repeat from record to record (a provider has a few streams, sites, holders and
    /// models) are written once per row group in a dictionary page; Parquet.Net dictionary-encodes
    /// only the columns it is told to. Chain hashes, all different, stay plain.
    /// </summary>
    private static ParquetOptions Options()
    {
        var options = new ParquetOptions();
        foreach (DataField field in (DataField[])[ProviderField, StreamField, JobField, HolderField, ModelField, SiteField, UuidsField, CatalogField])
        {
            options.ColumnEncodingHints[field.Path.ToString()] = EncodingHint.Dictionary;
        }

        return options;
    }

    private static async Task<long> WriteParquetAsync(NpgsqlDataReader reader, Stream output, CancellationToken cancellationToken)
    {
        await using ParquetWriter writer = await ParquetWriter.CreateAsync(Schema, output, Options(), cancellationToken: cancellationToken);
        writer.CustomMetadata = new Dictionary<string, string> { [ZoneKey] = ZoneValue };
        var rows = new List<Row>(RowGroupRecords);
        long count = 0;
        while (true)
        {
            Row? next = await ReadAsync(reader, cancellationToken);
            if (next is { } row)
            {
                rows.Add(row);
            }

            if (rows.Count == RowGroupRecords || (next is null && rows.Count > 0))
            {
                await WriteRowGroupAsync(writer, rows, cancellationToken);
                count += rows.Count;
                rows.Clear();
            }

            if (next is null)
            {
                return count;
            }
        }
    }

    private static async Task WriteRowGroupAsync(ParquetWriter writer, List<Row> rows, CancellationToken cancellationToken)
    {
        using ParquetRowGroupWriter group = writer.CreateRowGroup();
        await group.WriteAsync(ProviderField, rows.Select(r => r.ProviderId).ToArray());
        await group.WriteAsync(StreamField, rows.Select(r => r.StreamId).ToArray());
        await group.WriteAsync<long>(SequenceField, rows.Select(r => r.Sequence).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync(JobField, rows.Select(r => r.JobId).ToArray());
        await group.WriteAsync(HolderField, rows.Select(r => r.HolderCode).ToArray());
        await group.WriteAsync(ModelField, rows.Select(r => r.DeviceModel).ToArray());
        await group.WriteAsync<int>(CountField, rows.Select(r => r.DeviceCount).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<int>(NumeratorField, rows.Select(r => r.ShareNumerator).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<int>(DenominatorField, rows.Select(r => r.ShareDenominator).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<long>(StartMsField, rows.Select(r => r.StartMs).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<long>(EndMsField, rows.Select(r => r.EndMs).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<DateTime>(StartField, rows.Select(r => Storage.UnixMs.ToDateTime(r.StartMs)).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<DateTime>(EndField, rows.Select(r => Storage.UnixMs.ToDateTime(r.EndMs)).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync(SiteField, rows.Select(r => r.Site).ToArray());
        await group.WriteAsync(UuidsField, rows.Select(r => r.DeviceUuids ?? "").ToArray());
        await group.WriteAsync<long>(EnergyField, rows.Select(r => r.EnergyMwh).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync(CatalogField, rows.Select(r => r.CatalogVersion).ToArray());
        await group.WriteAsync<long>(UsageField, rows.Select(r => r.UsageNpfh).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<long>(DeviceMsField, rows.Select(r => r.DeviceMs).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync(HashField, rows.Select(r => r.ChainHash).ToArray());
        await group.WriteAsync<DateTime>(CommittedField, rows.Select(r => Storage.UnixMs.ToDateTime(r.CommittedMs)).ToArray(), cancellationToken: cancellationToken);
        await group.WriteAsync<int>(SmActiveField, rows.Select(r => r.SmActiveBp).ToArray(), cancellationToken: cancellationToken);
    }

    /// <summary>The filter's SQL with Npgsql's positional parameters, since the export uses plain commands.</summary>
    private static string Positional(string where) => where
        .Replace("@providerId", "$1", StringComparison.Ordinal).Replace("@holderCode", "$2", StringComparison.Ordinal)
        .Replace("@jobId", "$3", StringComparison.Ordinal).Replace("@deviceModel", "$4", StringComparison.Ordinal)
        .Replace("@site", "$5", StringComparison.Ordinal).Replace("@streamId", "$6", StringComparison.Ordinal)
        .Replace("@from", "$7", StringComparison.Ordinal).Replace("@until", "$8", StringComparison.Ordinal)
        .Replace("@includeProof", "$9", StringComparison.Ordinal);
}

internal static class FilterBinding
{
    /// <summary>Binds a filter to the positional parameters $1..$9 of <see cref="UsageFilter.Where"/>.</summary>
    public static NpgsqlCommand Bind(this NpgsqlCommand command, UsageFilter filter)
    {
        command.Parameters.Clear();
        foreach (string? text in new[] { filter.ProviderId, filter.HolderCode, filter.JobId, filter.DeviceModel, filter.Site, filter.StreamId })
        {
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)text ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
        }

        command.Parameters.Add(new NpgsqlParameter { Value = filter.From.UtcDateTime });
        command.Parameters.Add(new NpgsqlParameter { Value = filter.Until.UtcDateTime });
        command.Parameters.Add(new NpgsqlParameter { Value = filter.IncludeProofStreams });
        return command;
    }
}
