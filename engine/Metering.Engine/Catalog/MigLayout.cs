namespace Metering.Engine.Catalog;

/// <summary>One MIG compute profile: its name, how many compute slices it takes and the multiprocessors it gets.</summary>
public sealed record MigProfile(string Name, uint Slices, uint Multiprocessors);

/// <summary>
/// How a model partitions under MIG, from the catalog: the device's multiprocessors, the compute
/// slices it is cut into, and the profiles. A share whose denominator is <see cref="Slices"/>
/// names MIG slices, and its share of the device is the profile's multiprocessor fraction
/// (1g on an A100 is 14/108, not 1/7), because a slice computes with its SMs and the slices of
/// one GPU leave some SMs unused.
/// </summary>
public sealed class MigLayout
{
    // Indexed by slice count, so that the ingest hot path finds a profile without a search or an allocation.
    private readonly uint[] _multiprocessorsBySlices;

    internal MigLayout(uint multiprocessors, uint slices, IReadOnlyList<MigProfile> profiles, string source)
    {
        Multiprocessors = multiprocessors;
        Slices = slices;
        Profiles = profiles;
        Source = source;
        _multiprocessorsBySlices = new uint[slices + 1];
        foreach (MigProfile profile in profiles)
        {
            _multiprocessorsBySlices[profile.Slices] = profile.Multiprocessors;
        }
    }

    /// <summary>The device's multiprocessors: the denominator of every MIG share.</summary>
    public uint Multiprocessors { get; }

    /// <summary>Compute slices per device (7 on GA100): the share denominator that names MIG slices.</summary>
    public uint Slices { get; }

    public IReadOnlyList<MigProfile> Profiles { get; }

    public string Source { get; }

    /// <summary>The multiprocessors of the profile that takes this many slices, or 0 when no profile does.</summary>
    public uint MultiprocessorsOf(uint slices) => slices < _multiprocessorsBySlices.Length ? _multiprocessorsBySlices[slices] : 0;

    /// <summary>The slice counts of the profiles, for refusal messages.</summary>
    public string SliceCounts => string.Join(", ", Profiles.Select(p => p.Slices).Distinct().Order().Select(s => $"{s}/{Slices}"));
}
