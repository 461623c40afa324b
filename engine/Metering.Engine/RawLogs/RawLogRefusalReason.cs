using Metering.Engine.Formatting;

namespace Metering.Engine.RawLogs;

/// <summary>
/// Why a raw-log upload or one of its lines was refused. The engine's own enum: the server maps it by
/// value to the wire's RawLogRefusal (proto/metering/v1/rawlog.proto), and a test keeps the two with
/// the same names and numbers.
/// </summary>
public enum RawLogRefusalReason
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>The line is longer than the server's line limit (the line is skipped; the upload goes on).</summary>
    LineTooLong = 1,

    /// <summary>The line is not valid UTF-8.</summary>
    InvalidUtf8 = 2,

    /// <summary>The line does not have the fields its format needs, or a field does not parse.</summary>
    MalformedLine = 3,

    /// <summary>The account has no holder in the mapping.</summary>
    UnmappedAccount = 4,

    /// <summary>The GRES type or partition has no device model in the mapping.</summary>
    UnmappedDevice = 5,

    /// <summary>Elapsed disagrees with End − Start.</summary>
    ElapsedMismatch = 6,

    /// <summary>The first message was not a header, or a header came twice (whole call; FAILED_PRECONDITION).</summary>
    HeaderMissing = 7,

    /// <summary>The header is invalid: ids, format, mapping or sizes (whole call; INVALID_ARGUMENT).</summary>
    HeaderInvalid = 8,

    /// <summary>The header's offset lies beyond the committed offset (whole call; FAILED_PRECONDITION); metadata `expected` gives the committed offset.</summary>
    OffsetGap = 9,

    /// <summary>The file is larger than the server's upload limit (whole call; RESOURCE_EXHAUSTED).</summary>
    UploadTooLarge = 10,

    /// <summary>The upload id is known with another stream, format, mapping or size (whole call; FAILED_PRECONDITION).</summary>
    UploadMismatch = 11,

    /// <summary>No upload has this id (GetUpload; NOT_FOUND).</summary>
    UploadNotFound = 12,

    /// <summary>More data arrived than the header's total_bytes (whole call; INVALID_ARGUMENT).</summary>
    UploadOverrun = 13,

    /// <summary>Another call advanced the same upload meanwhile (whole call; ABORTED): ask GetUpload and resume.</summary>
    UploadBusy = 14,

    /// <summary>A sacct time is skipped or repeated by the mapping's time zone (a daylight-saving change), so it names no single instant.</summary>
    UnresolvableLocalTime = 15,
}

/// <summary>The contract's spelling of a raw-log refusal reason: the name a line error is stored and reported under.</summary>
internal static class RawLogRefusalNames
{
    private static readonly string[] Names = ContractNames.Of<RawLogRefusalReason>("RAW_LOG_REFUSAL_UNSPECIFIED");

    public static string ContractName(this RawLogRefusalReason reason) => Names[(int)reason];
}
