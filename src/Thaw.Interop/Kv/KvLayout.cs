using Thaw.Interop.Format;

namespace Thaw.Interop.Kv;

/// <summary>How a KV snapshot's cache is shaped and laid out in memory (docs/FORMAT.md, "KV-cache snapshots").
/// Two snapshots' caches are interchangeable only when every field agrees.</summary>
/// <param name="TensorLayout">"transformers" (keys and values per layer, [1, kv_heads, tokens, head_dim]) or
/// "vllm/&lt;backend&gt;/&lt;order&gt;" (one paged tensor per layer in memory order, blocks along <paramref name="BlockDim"/>).</param>
/// <param name="BlockSize">Tokens per hashed block (and per paged block for a vLLM layout).</param>
/// <param name="BlockDim">For a vLLM layout, which dimension of a layer's region counts blocks; otherwise null.</param>
/// <param name="LayerNames">For a vLLM layout, the attention layers' names in region order; otherwise empty.</param>
public sealed record KvLayout(string TensorLayout, int Layers, int KvHeads, int HeadDim, DType DType, int BlockSize,
    int? BlockDim, IReadOnlyList<string> LayerNames)
{
    /// <summary>The tensor layout of transformers caches: keys and values per layer, [1, kv_heads, tokens, head_dim].</summary>
    public const string Transformers = "transformers";
    /// <summary>The prefix of vLLM paged layouts, followed by the attention backend and the memory order.</summary>
    public const string VllmPrefix = "vllm/";

    /// <summary>Whether this is a vLLM paged layout.</summary>
    public bool IsVllm => TensorLayout.StartsWith(VllmPrefix, StringComparison.Ordinal);
}

/// <summary>One saved prefix: how many tokens it covers and the chained hash of each of its blocks.</summary>
public sealed record KvPrefix(int Index, long Tokens, IReadOnlyList<string> BlockHashes)
{
    /// <summary>The region holding this prefix's token ids.</summary>
    public string TokensRegion => KvNames.Tokens(Index);
}

/// <summary>Region names of a KV snapshot.</summary>
public static class KvNames
{
    /// <summary>The token ids of a prefix: I64 [tokens].</summary>
    public static string Tokens(int prefix) => $"p{prefix}.tokens";
    /// <summary>A transformers layer's keys.</summary>
    public static string Keys(int prefix, int layer) => $"p{prefix}.l{layer}.k";
    /// <summary>A transformers layer's values.</summary>
    public static string Values(int prefix, int layer) => $"p{prefix}.l{layer}.v";
    /// <summary>A vLLM layer's paged blocks.</summary>
    public static string Paged(int prefix, int layer) => $"p{prefix}.l{layer}";
}
