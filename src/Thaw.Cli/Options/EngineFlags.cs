using System.CommandLine;
using Thaw.Interop.Restore;

namespace Thaw.Cli.Options;

/// <summary>--device/--ordinal and the engine sizing flags, shared by the commands that run the engine.</summary>
internal sealed class EngineFlags
{
    private readonly Option<DeviceKind?> _device;
    private readonly Func<DeviceKind> _defaultDevice;
    private readonly Option<long> _ordinal = Flags.Integer("--ordinal", "GPU index", 0, 0, 1024);
    private readonly Option<long> _threads = Flags.Integer("--threads", "reader threads (0: a thread a core, up to 16)", 0, 0, 64);
    private readonly Option<long> _chunkMib = Flags.Integer("--chunk-mib", "read size per request (0: 1 MiB)", 0, 0, 4096);
    private readonly Option<long> _stagingMib = Flags.Integer("--staging-mib", "pinned staging memory, pinned as first needed (0: 64 MiB)", 0, 0, 1 << 20);

    public EngineFlags(Func<DeviceKind> defaultDevice, string deviceDescription)
    {
        _device = Flags.Choice<DeviceKind>("--device", deviceDescription);
        _defaultDevice = defaultDevice;
    }

    /// <summary>The default of commands that restore: the GPU when there is one.</summary>
    public static DeviceKind GpuIfPresent() => ThawEngine.DeviceCount(DeviceKind.Cuda) > 0 ? DeviceKind.Cuda : DeviceKind.Mock;

    public void AddTo(Command command)
    {
        command.Add(_device);
        command.Add(_ordinal);
        command.Add(_threads);
        command.Add(_chunkMib);
        command.Add(_stagingMib);
    }

    public ThawEngine Create(ParseResult parse)
    {
        var settings = new EngineSettings
        {
            IoThreads = (int)parse.GetValue(_threads),
            ChunkBytes = parse.GetValue(_chunkMib) << 20,
            StagingBytes = parse.GetValue(_stagingMib) << 20,
        };
        return ThawEngine.Create(parse.GetValue(_device) ?? _defaultDevice(), (int)parse.GetValue(_ordinal), settings);
    }
}
