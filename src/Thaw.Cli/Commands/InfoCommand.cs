using System.CommandLine;
using Thaw.Cli.Options;
using Thaw.Interop.Format;

namespace Thaw.Cli.Commands;

internal sealed class InfoCommand : Command
{
    private readonly Argument<string> _snapshot = Flags.Path("snapshot", "the snapshot file");
    private readonly Option<bool> _tensors = Flags.Switch("--tensors", "also list every tensor with its dtype, shape, size and CRC32C");
    private readonly Option<bool> _json = Flags.Switch("--json", "print the header as one JSON object (the same as thaw_vllm.info)");

    public InfoCommand() : base("info", "tensors, dtypes, sizes and totals of a snapshot")
    {
        Add(_snapshot);
        Add(_tensors);
        Add(_json);
        SetAction(Run);
    }

    private int Run(ParseResult parse)
    {
        Snapshot s = SnapshotReader.Read(parse.GetRequiredValue(_snapshot));
        if (parse.GetValue(_json))
        {
            Console.Out.WriteLine(SnapshotJson.Describe(s));
            return 0;
        }
        var o = Console.Out;
        o.WriteLine($"snapshot  {s.Path}");
        o.WriteLine($"format    v{SnapshotFormat.Version}, {Units.Size(s.FileLength)} on disk, data at offset {s.DataOffset}");
        o.WriteLine($"tensors   {s.Tensors.Count}, {Units.Size(s.TensorBytes)} ({s.TensorBytes} bytes)");
        o.WriteLine($"parallel  tensor-parallel rank {s.TpRank} of {s.TpWorldSize}");
        foreach (var group in s.Tensors.GroupBy(t => t.DType).OrderByDescending(g => g.Sum(t => t.Length)))
            o.WriteLine($"dtype     {group.Key,-8} {group.Count(),6} tensors  {Units.Size(group.Sum(t => t.Length))}");
        if (ArtifactsSummary.IsArtifacts(s))
            ArtifactsSummary.Write(s, o);
        foreach (var (key, value) in s.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            o.WriteLine($"metadata  {key} = {(value.Length > 120 ? value[..117] + "..." : value)}");
        KvInfo.Print(o, s);
        if (parse.GetValue(_tensors))
        {
            o.WriteLine();
            o.WriteLine($"{"name",-56} {"dtype",-8} {"shape",-22} {"bytes",14}  crc32c");
            foreach (TensorEntry t in s.Tensors)
                o.WriteLine($"{t.Name,-56} {t.DType,-8} {t.ShapeText,-22} {t.Length,14}  {t.Crc32C:x8}");
        }
        return 0;
    }
}
