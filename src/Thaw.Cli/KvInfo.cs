using Thaw.Interop.Format;
using Thaw.Interop.Kv;

namespace Thaw.Cli;

/// <summary>The KV-cache lines of `thaw info`: layout, model and each saved prefix.</summary>
internal static class KvInfo
{
    /// <summary>Prints nothing for a weights snapshot.</summary>
    /// <exception cref="Thaw.Interop.ThawFormatException">The KV description is invalid.</exception>
    public static void Print(TextWriter o, Snapshot s)
    {
        if (!KvSnapshot.IsKv(s.Metadata))
            return;
        KvSnapshot kv = KvSnapshot.From(s);
        KvLayout l = kv.Layout;
        o.WriteLine($"kind      KV cache of model {kv.Model}");
        o.WriteLine($"layout    {l.TensorLayout}: {l.Layers} layers, {l.KvHeads} KV heads, head_dim {l.HeadDim}, {l.DType}" +
            (l.BlockDim is int d ? $", blocks along dimension {d}" : ""));
        o.WriteLine($"hash      {kv.HashAlgorithm} over {l.BlockSize}-token blocks");
        if (l.LayerNames.Count > 0)
            o.WriteLine($"layers    {l.LayerNames[0]} ... {l.LayerNames[^1]}");
        foreach (KvPrefix p in kv.Prefixes)
            o.WriteLine($"prefix {p.Index,-2} {p.Tokens} tokens, {p.BlockHashes.Count} blocks, last block hash {p.BlockHashes[^1]}");
    }
}
