using System.Security.Cryptography;
using ILGPU;
using System.Runtime.Versioning;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Tests;

/// <summary>
/// The probe's command line as a provider meets it: `--device auto` never measures the CPU in a
/// GPU's place, `keygen` makes a node key only its owner can read and never overwrites one by
/// accident, and `run` checks its input before it contacts any server.
/// </summary>
[UnsupportedOSPlatform("windows")] // File modes are what keygen guarantees, and they exist on Unix only.
public sealed class ProbeCommandTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("probe-cli-").FullName;

    [Fact]
    public async Task Device_auto_without_a_gpu_says_so_and_exits_3_instead_of_measuring_the_cpu()
    {
        string json = Path.Combine(_folder, "report.json");

        var (exit, output, error) = await ProbeProcess.RunAsync("--size", "small", "--kernels", "bandwidth", "--runs", "1", "--json", json);

        if (GpuPresent())
        {
            // On a machine with a GPU the same command measures it, and only it.
            Assert.True(exit == 0, error);
            Assert.DoesNotContain(ProbeReportJson.Deserialize(await File.ReadAllTextAsync(json)).Devices, d => d.AcceleratorType == "cpu");
            return;
        }

        Assert.Equal(3, exit);
        Assert.Contains("No GPU found", error, StringComparison.Ordinal);
        Assert.Contains("--device cpu", error, StringComparison.Ordinal);
        Assert.Equal("", output);
        Assert.False(File.Exists(json), "a report was written without a GPU");
    }

    [Fact]
    public async Task Device_cpu_measures_the_cpu_when_asked_for()
    {
        var (exit, output, error) = await ProbeProcess.RunAsync("--device", "cpu", "--size", "small", "--kernels", "bandwidth", "--runs", "1");

        Assert.True(exit == 0, error);
        Assert.Contains("(cpu)", output, StringComparison.Ordinal);
        Assert.Contains("memory-bandwidth", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keygen_writes_a_p256_private_key_only_its_owner_can_read_and_prints_its_public_key()
    {
        string path = Path.Combine(_folder, "node.pem");

        var (exit, output, error) = await ProbeProcess.RunAsync("keygen", "--out", path);

        Assert.True(exit == 0, error);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        using var key = ECDsa.Create();
        key.ImportFromPem(await File.ReadAllTextAsync(path));
        Assert.Equal(ECCurve.NamedCurves.nistP256.Oid.Value, key.ExportParameters(true).Curve.Oid.Value);
        Assert.Equal(key.ExportSubjectPublicKeyInfoPem().Trim(), output.Trim());
        Assert.DoesNotContain("PRIVATE", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keygen_refuses_to_overwrite_a_key_without_force_and_leaves_it_as_it_was()
    {
        string path = Path.Combine(_folder, "node.pem");
        Assert.Equal(0, (await ProbeProcess.RunAsync("keygen", "--out", path)).ExitCode);
        string first = await File.ReadAllTextAsync(path);

        var (exit, output, error) = await ProbeProcess.RunAsync("keygen", "--out", path);

        Assert.Equal(2, exit);
        Assert.Contains("--force", error, StringComparison.Ordinal);
        Assert.Equal("", output);
        Assert.Equal(first, await File.ReadAllTextAsync(path));
    }

    [Fact]
    public async Task Keygen_with_force_replaces_a_readable_file_by_a_new_key_of_mode_0600()
    {
        string path = Path.Combine(_folder, "node.pem");
        await File.WriteAllTextAsync(path, "an old file anyone could read\n");
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);

        var (exit, _, error) = await ProbeProcess.RunAsync("keygen", "--out", path, "--force");

        Assert.True(exit == 0, error);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.StartsWith("-----BEGIN PRIVATE KEY-----", await File.ReadAllTextAsync(path), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--out")]
    [InlineData("--out", "--force")]
    [InlineData("--out", "k.pem", "--size", "small")]
    public async Task Keygen_with_bad_options_exits_2_and_writes_nothing(params string[] arguments)
    {
        var (exit, output, _) = await ProbeProcess.RunAsync(["keygen", .. arguments]);

        Assert.Equal(2, exit);
        Assert.Equal("", output);
        Assert.Empty(Directory.GetFiles(_folder));
    }

    [Fact]
    public async Task Run_with_a_missing_key_file_exits_2_before_any_server_is_asked()
    {
        // Nothing listens on the discard port: had the probe called it, it would exit 5, not 2.
        var (exit, _, error) = await ProbeProcess.RunAsync(new Dictionary<string, string> { ["METERING_API_KEY"] = "k" },
            "run", "--server", "http://127.0.0.1:9", "--code", "914403001922038216", "--node-id", "gpu-01", "--key", Path.Combine(_folder, "absent.pem"), "--device", "cpu", "--device-uuid", "CPU-0");

        Assert.Equal(2, exit);
        Assert.Contains("metering-probe keygen", error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_with_a_public_key_in_place_of_the_private_key_exits_2()
    {
        string path = Path.Combine(_folder, "node.pub.pem");
        using (var key = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            await File.WriteAllTextAsync(path, key.ExportSubjectPublicKeyInfoPem());
        }

        var (exit, _, error) = await ProbeProcess.RunAsync(new Dictionary<string, string> { ["METERING_API_KEY"] = "k" },
            "run", "--server", "http://127.0.0.1:9", "--code", "914403001922038216", "--node-id", "gpu-01", "--key", path, "--device", "cpu", "--device-uuid", "CPU-0");

        Assert.Equal(2, exit);
        Assert.Contains("no ECDSA private key", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://metering.example.org:7390", "cleartext")]
    [InlineData("https://127.0.0.1:9", "METERING_API_KEY")]
    public async Task Run_refuses_cleartext_to_another_machine_and_a_missing_api_key_with_exit_2(string server, string said)
    {
        string key = Path.Combine(_folder, "node.pem");
        Assert.Equal(0, (await ProbeProcess.RunAsync("keygen", "--out", key)).ExitCode);
        var environment = said == "cleartext" ? new Dictionary<string, string> { ["METERING_API_KEY"] = "k" } : null;

        var (exit, _, error) = await ProbeProcess.RunAsync(environment, "run", "--server", server, "--code", "914403001922038216", "--node-id", "gpu-01", "--key", key, "--device", "cpu", "--device-uuid", "CPU-0");

        Assert.Equal(2, exit);
        Assert.Contains(said, error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_with_an_unreachable_server_exits_5_after_checking_everything_else()
    {
        string key = Path.Combine(_folder, "node.pem");
        Assert.Equal(0, (await ProbeProcess.RunAsync("keygen", "--out", key)).ExitCode);

        var (exit, output, error) = await ProbeProcess.RunAsync(new Dictionary<string, string> { ["METERING_API_KEY"] = "k" },
            "run", "--server", "http://127.0.0.1:9", "--code", "914403001922038216", "--node-id", "gpu-01", "--key", key, "--device", "cpu", "--device-uuid", "CPU-0");

        Assert.Equal(5, exit);
        Assert.Contains("no Metering server answers", error, StringComparison.Ordinal);
        Assert.Equal("", output);
    }

    /// <summary>Whether ILGPU sees a GPU here, as `--device auto` looks for one.</summary>
    private static bool GpuPresent()
    {
        using Context context = Context.Create(builder => builder.Cuda().OpenCL());
        return context.Devices.Any(d => d.AcceleratorType == AcceleratorType.Cuda
            || (d is CLDevice openCl && !openCl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU)));
    }

    public void Dispose() => Directory.Delete(_folder, recursive: true);
}
