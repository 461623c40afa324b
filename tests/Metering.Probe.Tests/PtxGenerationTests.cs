using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using Metering.Probe.Kernels;

namespace Metering.Probe.Tests;

/// <summary>
/// ILGPU's PTX backend needs no GPU or driver, so the inline-PTX kernels are compiled here to the
/// PTX the driver would receive (sm_80, PTX ISA 7.1, what ILGPU picks for an H100 too), and the
/// portable kernels to OpenCL C.
/// </summary>
public sealed class PtxGenerationTests
{
    [Theory]
    [InlineData(nameof(TensorKernels), "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")]
    [InlineData(nameof(PackedHalfKernels), "fma.rn.f16x2")]
    [InlineData(nameof(Fp32Kernels), "fma.rn.f32")]
    public void The_inline_ptx_kernels_compile_to_ptx_holding_their_instruction(string kernelType, string instruction)
    {
        using Context context = Context.Create(builder => builder.Optimize(OptimizationLevel.O2));
        using var backend = new PTXBackend(context, CudaArchitecture.SM_80, CudaInstructionSet.ISA_71, null!);
        MethodInfo method = Kernel(kernelType, "Ptx");

        var kernel = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(method), default);

        Assert.Contains(instruction, kernel.PTXAssembly, StringComparison.Ordinal);
        Assert.Contains(".target sm_80", kernel.PTXAssembly, StringComparison.Ordinal);
    }

    [Fact]
    public void The_packed_fp16_kernel_unrolls_four_steps_per_loop_turn()
    {
        using Context context = Context.Create(builder => builder.Optimize(OptimizationLevel.O2));
        using var backend = new PTXBackend(context, CudaArchitecture.SM_80, CudaInstructionSet.ISA_71, null!);

        var kernel = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(Kernel(nameof(PackedHalfKernels), "Ptx")), default);

        int count = kernel.PTXAssembly.Split("fma.rn.f16x2").Length - 1;
        Assert.Equal(64, count);
    }

    [Theory]
    [InlineData(nameof(TensorKernels), "Portable")]
    [InlineData(nameof(PackedHalfKernels), "Portable")]
    [InlineData(nameof(Fp32Kernels), "Emulated")]
    [InlineData(nameof(BandwidthKernels), "Copy")]
    [InlineData(nameof(BandwidthKernels), "Fill")]
    [InlineData(nameof(BandwidthKernels), "Fold")]
    public void The_portable_kernels_compile_to_opencl_c(string kernelType, string methodName)
    {
        using Context context = Context.Create(builder => builder.Optimize(OptimizationLevel.O2));
        using var backend = new CLBackend(context, new CLCapabilityContext(false, true, true, false, false), CLDeviceVendor.Other, new CLCVersion(1, 2));

        var kernel = (CLCompiledKernel)backend.Compile(EntryPointDescription.FromImplicitlyGroupedKernel(Kernel(kernelType, methodName)), default);

        Assert.Contains("kernel", kernel.Source, StringComparison.Ordinal);
    }

    private static MethodInfo Kernel(string typeName, string methodName) =>
        typeof(TensorKernels).Assembly.GetType($"Metering.Probe.Kernels.{typeName}")!.GetMethod(methodName, BindingFlags.Public | BindingFlags.Static)!;
}
