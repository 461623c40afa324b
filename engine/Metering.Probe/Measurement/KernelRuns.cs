using System.Buffers.Binary;
using ILGPU;
using ILGPU.Runtime;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Kernels;

namespace Metering.Probe.Measurement;

/// <summary>One kernel, loaded on one accelerator with its buffers, ready to launch repeatedly.</summary>
internal abstract class KernelRun : IDisposable
{
    /// <summary>"ptx" or "portable".</summary>
    public abstract string ArithmeticPath { get; }

    /// <summary>Enqueues one run; the caller synchronises.</summary>
    public abstract void Launch();

    /// <summary>Copies the last run's output back and hashes every leaf.</summary>
    public abstract byte[] HashLeaves();

    public abstract void Dispose();

    public static KernelRun Create(Accelerator accelerator, KernelKind kind, InputKey key, WorkSize size) => kind switch
    {
        KernelKind.TensorFp16 => new TensorRun(accelerator, key, size),
        KernelKind.PackedFp16 => new PackedHalfRun(accelerator, key, size),
        KernelKind.Fp32Fma => new Fp32Run(accelerator, key, size),
        KernelKind.MemoryBandwidth => new BandwidthRun(accelerator, key, size),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };

    protected static bool IsCuda(Accelerator accelerator) => accelerator.AcceleratorType == AcceleratorType.Cuda;

    protected static KernelConfig Groups(long threads, int groupSize) =>
        new((int)((threads + groupSize - 1) / groupSize), groupSize);
}

internal sealed class TensorRun : KernelRun
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _output;
    private readonly Action _launch;
    private readonly WorkSize _size;

    public TensorRun(Accelerator accelerator, InputKey key, WorkSize size)
    {
        _size = size;
        int tiles = size.Items * WorkShape.TensorChainsPerWarp;
        _output = accelerator.Allocate1D<float>((long)tiles * WorkShape.TensorTileElements);
        ArrayView<float> output = _output.View;
        if (IsCuda(accelerator))
        {
            ArithmeticPath = "ptx";
            var kernel = accelerator.LoadStreamKernel<InputKey, int, int, ArrayView<float>>(TensorKernels.Ptx);
            KernelConfig config = Groups((long)size.Items * 32, TensorKernels.GroupSize);
            _launch = () => kernel(config, key, size.Items, size.Iterations, output);
        }
        else
        {
            ArithmeticPath = "portable";
            var kernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, InputKey, int, ArrayView<float>>(TensorKernels.Portable);
            _launch = () => kernel(tiles, key, size.Iterations, output);
        }
    }

    public override string ArithmeticPath { get; }

    public override void Launch() => _launch();

    public override byte[] HashLeaves()
    {
        float[] output = _output.GetAsArray1D();
        return Commitment.HashLeaves(KernelKind.TensorFp16, _size.Items, (warp, payload) =>
        {
            int first = warp * WorkShape.TensorChainsPerWarp * WorkShape.TensorTileElements;
            for (int e = 0; e < WorkShape.TensorChainsPerWarp * WorkShape.TensorTileElements; e++)
            {
                // Every right value is an integer below 2^24; anything else becomes a value no reference can produce.
                float value = output[first + e];
                int integer = MathF.Abs(value) < 16_777_216f && value == MathF.Truncate(value) ? (int)value : int.MinValue;
                BinaryPrimitives.WriteInt32BigEndian(payload[(e * 4)..], integer);
            }
        });
    }

    public override void Dispose() => _output.Dispose();
}

internal sealed class PackedHalfRun : KernelRun
{
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> _output;
    private readonly Action _launch;
    private readonly WorkSize _size;

    public PackedHalfRun(Accelerator accelerator, InputKey key, WorkSize size)
    {
        _size = size;
        _output = accelerator.Allocate1D<uint>((long)size.Items * WorkShape.PairsPerThread * 2);
        ArrayView<uint> output = _output.View;
        if (IsCuda(accelerator))
        {
            ArithmeticPath = "ptx";
            var kernel = accelerator.LoadStreamKernel<InputKey, int, int, ArrayView<uint>>(PackedHalfKernels.Ptx);
            KernelConfig config = Groups(size.Items, PackedHalfKernels.GroupSize);
            _launch = () => kernel(config, key, size.Items, size.Iterations, output);
        }
        else
        {
            ArithmeticPath = "portable";
            var kernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, InputKey, int, ArrayView<uint>>(PackedHalfKernels.Portable);
            _launch = () => kernel(size.Items, key, size.Iterations, output);
        }
    }

    public override string ArithmeticPath { get; }

    public override void Launch() => _launch();

    public override byte[] HashLeaves()
    {
        uint[] output = _output.GetAsArray1D();
        return Commitment.HashLeaves(KernelKind.PackedFp16, _size.Items, (thread, payload) =>
        {
            int first = thread * WorkShape.PairsPerThread * 2;
            for (int w = 0; w < WorkShape.PairsPerThread * 2; w++)
            {
                BinaryPrimitives.WriteUInt32BigEndian(payload[(w * 4)..], output[first + w]);
            }
        });
    }

    public override void Dispose() => _output.Dispose();
}

internal sealed class Fp32Run : KernelRun
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _output;
    private readonly Action _launch;
    private readonly WorkSize _size;

    public Fp32Run(Accelerator accelerator, InputKey key, WorkSize size)
    {
        _size = size;
        _output = accelerator.Allocate1D<float>((long)size.Items * WorkShape.PairsPerThread * 2);
        ArrayView<float> output = _output.View;
        if (IsCuda(accelerator))
        {
            ArithmeticPath = "ptx";
            var kernel = accelerator.LoadStreamKernel<InputKey, int, int, ArrayView<float>>(Fp32Kernels.Ptx);
            KernelConfig config = Groups(size.Items, Fp32Kernels.GroupSize);
            _launch = () => kernel(config, key, size.Items, size.Iterations, output);
        }
        else
        {
            ArithmeticPath = "portable";
            Action<Index1D, InputKey, int, ArrayView<float>> body = accelerator.AcceleratorType == AcceleratorType.CPU ? Fp32Kernels.Native : Fp32Kernels.Emulated;
            var kernel = accelerator.LoadAutoGroupedStreamKernel(body);
            _launch = () => kernel(size.Items, key, size.Iterations, output);
        }
    }

    public override string ArithmeticPath { get; }

    public override void Launch() => _launch();

    public override byte[] HashLeaves()
    {
        float[] output = _output.GetAsArray1D();
        return Commitment.HashLeaves(KernelKind.Fp32Fma, _size.Items, (thread, payload) =>
        {
            int first = thread * WorkShape.PairsPerThread * 2;
            for (int w = 0; w < WorkShape.PairsPerThread * 2; w++)
            {
                BinaryPrimitives.WriteUInt32BigEndian(payload[(w * 4)..], BitConverter.SingleToUInt32Bits(output[first + w]));
            }
        });
    }

    public override void Dispose() => _output.Dispose();
}

internal sealed class BandwidthRun : KernelRun
{
    private readonly MemoryBuffer1D<ulong, Stride1D.Dense> _source;
    private readonly MemoryBuffer1D<ulong, Stride1D.Dense> _destination;
    private readonly MemoryBuffer1D<ulong, Stride1D.Dense> _folds;
    private readonly Action<Index1D, ArrayView<BandwidthKernels.WordPair>, ArrayView<BandwidthKernels.WordPair>, int, int> _copy;
    private readonly Action<Index1D, ArrayView<ulong>, ArrayView<ulong>> _fold;
    private readonly WorkSize _size;
    private readonly int _pairs;
    private readonly int _stride;

    public BandwidthRun(Accelerator accelerator, InputKey key, WorkSize size)
    {
        _size = size;
        ArithmeticPath = IsCuda(accelerator) ? "ptx" : "portable";
        long words = (long)size.Items * WorkShape.BandwidthChunkWords;
        _source = accelerator.Allocate1D<ulong>(words);
        _destination = accelerator.Allocate1D<ulong>(words);
        _folds = accelerator.Allocate1D<ulong>(size.Items);
        _pairs = (int)(words / 2);
        _stride = (_pairs + BandwidthKernels.ElementsPerThread - 1) / BandwidthKernels.ElementsPerThread;
        _copy = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<BandwidthKernels.WordPair>, ArrayView<BandwidthKernels.WordPair>, int, int>(BandwidthKernels.Copy);
        _fold = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ulong>, ArrayView<ulong>>(BandwidthKernels.Fold);
        var fill = accelerator.LoadAutoGroupedStreamKernel<Index1D, InputKey, ArrayView<ulong>>(BandwidthKernels.Fill);

        // The destination starts zeroed so that its final content can only come from the copies.
        fill((int)words, key, _source.View);
        _destination.MemSetToZero();
        accelerator.Synchronize();
    }

    /// <summary>The copy is ILGPU-generated PTX on CUDA; there is no emulation to tell apart, only the backend.</summary>
    public override string ArithmeticPath { get; }

    public override void Launch()
    {
        ArrayView<ulong> sourceWords = _source.View;
        ArrayView<ulong> destinationWords = _destination.View;
        ArrayView<BandwidthKernels.WordPair> source = sourceWords.Cast<BandwidthKernels.WordPair>();
        ArrayView<BandwidthKernels.WordPair> destination = destinationWords.Cast<BandwidthKernels.WordPair>();
        for (int pass = 0; pass < _size.Iterations; pass++)
        {
            _copy(_stride, source, destination, _pairs, _stride);
        }
    }

    public override byte[] HashLeaves()
    {
        _fold(_size.Items, _destination.View, _folds.View);
        ulong[] folds = _folds.GetAsArray1D();
        return Commitment.HashLeaves(KernelKind.MemoryBandwidth, _size.Items, (chunk, payload) => BinaryPrimitives.WriteUInt64BigEndian(payload, folds[chunk]));
    }

    public override void Dispose()
    {
        _source.Dispose();
        _destination.Dispose();
        _folds.Dispose();
    }
}
