using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Cli;
using Metering.Probe.Measurement;

namespace Metering.Probe.Tests;

public sealed class OptionsTests
{
    private const string Nonce = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    [Fact]
    public void A_nonce_makes_the_run_attested_and_other_options_are_read()
    {
        ProbeOptions options = ProbeOptions.Parse(["--nonce", Nonce, "--device", "cpu", "--runs", "7", "--size", "small", "--work", "tensor=16:32", "--kernels", "tensor", "--json", "out.json"]);

        Assert.Null(options.Error);
        Assert.True(options.Settings!.Attested);
        Assert.Equal(Convert.FromHexString(Nonce), options.Settings.Nonce);
        Assert.Equal(DeviceFilter.Cpu, options.Settings.Devices);
        Assert.Equal(7, options.Settings.Runs);
        Assert.Equal(SizePreset.Small, options.Settings.Size);
        Assert.Equal(new WorkSize(16, 32), options.Settings.WorkOverrides[KernelKind.TensorFp16]);
        Assert.Equal("out.json", options.JsonPath);
    }

    [Fact]
    public void Without_a_nonce_the_run_is_unattested_on_a_random_nonce()
    {
        ProbeOptions first = ProbeOptions.Parse([]);
        ProbeOptions second = ProbeOptions.Parse([]);

        Assert.False(first.Settings!.Attested);
        Assert.Equal(32, first.Settings.Nonce.Length);
        Assert.NotEqual(first.Settings.Nonce, second.Settings!.Nonce);
    }

    [Theory]
    [InlineData("unknown option '--gpu'", "--gpu")]
    [InlineData("--nonce needs a value", "--nonce")]
    [InlineData("--nonce: an attested run takes the work of every kernel from the server's challenge; give --work for packed-fp16, fp32-fma, memory-bandwidth",
        "--nonce", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "--work", "tensor-fp16=8:8")]
    [InlineData("--nonce: a nonce is 64 hex digits (32 bytes), not 4 characters", "--nonce", "abcd")]
    [InlineData("--nonce: a nonce holds hex digits only (0-9, a-f)", "--nonce", "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")]
    [InlineData("--device: 'tpu' is not one of auto, cuda, opencl, cpu, all", "--device", "tpu")]
    [InlineData("--runs: '0' is not a whole number from 1 to 100", "--runs", "0")]
    [InlineData("--runs: '-3' is not a whole number from 1 to 100", "--runs", "-3")]
    [InlineData("--size: 'huge' is not one of auto, small, full", "--size", "huge")]
    [InlineData("--work: 'tensor' is not KIND=ITEMS:ITERATIONS, for example tensor=1024:4096", "--work", "tensor")]
    [InlineData("--work: tensor-fp16 iterations must be between 1 and 32768, not 40000", "--work", "tensor=8:40000")]
    [InlineData("--work: packed-fp16 iterations must be a multiple of 4, not 6", "--work", "fp16x2=8:6")]
    [InlineData("--kernels: 'int8' is not one of tensor, fp16x2, fp32, bandwidth", "--kernels", "tensor,int8")]
    [InlineData("--device-uuid: only the CPU accelerator takes a UUID from the command line; add --device cpu (a GPU's UUID is the hardware's)", "--device-uuid", "GPU-1")]
    [InlineData("--device-uuid: only the CPU accelerator takes a UUID from the command line; add --device cpu (a GPU's UUID is the hardware's)", "--device", "cuda", "--device-uuid", "GPU-1")]
    [InlineData("--device-uuid: 'a b' is not 1 to 96 characters from [A-Za-z0-9._:/-]", "--device", "cpu", "--device-uuid", "a b")]
    public void Bad_options_give_a_specific_error(string expected, params string[] args)
    {
        Assert.Equal(expected, ProbeOptions.Parse(args).Error);
    }

    [Fact]
    public void A_device_uuid_is_given_to_the_cpu_accelerator_only_when_the_run_measures_the_cpu()
    {
        ProbeOptions options = ProbeOptions.Parse(["--device", "cpu", "--device-uuid", "CPU-sandbox-node-1"]);

        Assert.Null(options.Error);
        Assert.Equal("CPU-sandbox-node-1", options.Settings!.CpuDeviceUuid);
        Assert.Null(ProbeOptions.Parse(["--device", "cpu"]).Settings!.CpuDeviceUuid);
    }

    [Fact]
    public void Run_takes_the_cpu_device_uuid_it_attests_with()
    {
        RunOptions options = RunOptions.Parse([.. RunBase, "--device", "cpu", "--device-uuid", "CPU-node-01-0"], _ => null);

        Assert.Null(options.Error);
        Assert.Equal((DeviceFilter.Cpu, "CPU-node-01-0"), (options.Devices, options.CpuDeviceUuid));
    }

    [Theory]
    [InlineData("--device", "auto")]
    [InlineData("--device", "cuda")]
    public void Run_on_a_gpu_reads_the_uuid_from_the_driver_and_takes_none_from_the_command_line(params string[] device)
    {
        RunOptions options = RunOptions.Parse([.. RunBase, .. device], _ => null);

        Assert.Null(options.Error);
        Assert.NotEqual(DeviceFilter.Cpu, options.Devices);
        Assert.Null(options.CpuDeviceUuid);
    }

    [Fact]
    public void A_cuda_uuid_is_written_as_nvidia_smi_writes_it()
    {
        byte[] bytes = Convert.FromHexString("3f2a9c1b7d4e4f0a8b6c5d4e3f2a1b0c");

        Assert.Equal("GPU-3f2a9c1b-7d4e-4f0a-8b6c-5d4e3f2a1b0c", CudaDeviceUuid.Format(bytes));
        Assert.Throws<ArgumentException>(() => CudaDeviceUuid.Format(bytes.AsSpan(0, 15)));
    }

    [Theory]
    [InlineData("--device opencl cannot attest: OpenCL exposes no device UUID", "--device", "opencl")]
    [InlineData("--device-uuid: only the CPU accelerator takes a UUID", "--device", "cuda", "--device-uuid", "GPU-1")]
    [InlineData("--device cpu needs --device-uuid ID", "--device", "cpu")]
    [InlineData("--device-uuid: 'CPU 0' is not 1 to 96 characters", "--device", "cpu", "--device-uuid", "CPU 0")]
    public void Run_refuses_a_device_whose_uuid_the_server_cannot_match(string said, params string[] device)
    {
        string? error = RunOptions.Parse([.. RunBase, .. device], _ => null).Error;

        Assert.NotNull(error);
        Assert.Contains(said, error, StringComparison.Ordinal);
    }

    private static readonly string[] RunBase = ["--server", "https://127.0.0.1:9", "--code", "914403001922038216", "--node-id", "cpu-node-01", "--key", "node.pem", "--api-key", "k"];

    [Fact]
    public void Help_is_recognised_anywhere_on_the_line()
    {
        Assert.True(ProbeOptions.Parse(["--runs", "3", "--help"]).ShowHelp);
        Assert.Contains("--nonce HEX", ProbeOptions.HelpText, StringComparison.Ordinal);
    }
}
