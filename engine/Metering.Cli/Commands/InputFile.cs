namespace Metering.Cli.Commands;

/// <summary>
/// A small input file a command reads whole (an inventory, a batch's rules): missing, too large
/// or unreadable is a usage error that names the file and changes nothing.
/// </summary>
internal static class InputFile
{
    /// <param name="path">The file the user named.</param>
    /// <param name="noun">What the file is, for messages ("inventory file").</param>
    /// <param name="bytesMax">The largest file taken, in bytes.</param>
    public static string ReadText(FileInfo path, string noun, long bytesMax)
    {
        if (!path.Exists)
        {
            throw new UsageException($"no {noun} at {path.FullName}");
        }

        if (path.Length > bytesMax)
        {
            throw new UsageException($"{path.Name} is {path.Length:N0} bytes; the largest {noun} taken is {bytesMax:N0}");
        }

        try
        {
            return File.ReadAllText(path.FullName);
        }
        catch (IOException e)
        {
            throw new UsageException($"cannot read {path.FullName}: {e.Message}");
        }
    }
}
