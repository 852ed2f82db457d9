using System.Text.Json;
using Thaw.Interop.Format;

namespace Thaw.Interop.Kv;

/// <summary>A snapshot of kind "kv-cache": its layout, model fingerprint and saved prefixes, validated
/// against its regions. The metadata is hostile input: every number and length is bounded before use.</summary>
public sealed class KvSnapshot
{
    /// <summary>The metadata key that marks a snapshot's kind.</summary>
    public const string KindKey = "thaw.kind";
    /// <summary>The kind of KV-cache snapshots.</summary>
    public const string Kind = "kv-cache";
    /// <summary>The metadata key of the JSON description.</summary>
    public const string DescriptionKey = "thaw.kv";
    /// <summary>The description version this reader knows.</summary>
    public const int DescriptionVersion = 1;

    /// <summary>Bound of the layers field.</summary>
    public const int MaxLayers = 1024;
    /// <summary>Bound of the kv_heads field.</summary>
    public const int MaxKvHeads = 1024;
    /// <summary>Bound of the head_dim field.</summary>
    public const int MaxHeadDim = 4096;
    /// <summary>Bound of the block_size field.</summary>
    public const int MaxBlockSize = 4096;
    /// <summary>Bound of the number of prefixes.</summary>
    public const int MaxPrefixes = 4096;
    /// <summary>Bound of a prefix's token count.</summary>
    public const long MaxPrefixTokens = 1L << 24;
    /// <summary>Bound of every string field, in UTF-8 bytes.</summary>
    public const int MaxStringBytes = 4096;
    /// <summary>Most dimensions of a paged layer region.</summary>
    public const int MaxRegionDims = 8;

    private KvSnapshot(string path, KvLayout layout, string model, IReadOnlyList<KvPrefix> prefixes, Snapshot? snapshot)
    {
        Path = path;
        Layout = layout;
        Model = model;
        Prefixes = prefixes;
        Snapshot = snapshot;
    }

    /// <summary>The snapshot file.</summary>
    public string Path { get; }
    /// <summary>The cache layout.</summary>
    public KvLayout Layout { get; }
    /// <summary>The model fingerprint the cache was computed with.</summary>
    public string Model { get; }
    /// <summary>The prefix hash algorithm.</summary>
    public string HashAlgorithm => KvHash.Algorithm;
    /// <summary>The saved prefixes, in region order.</summary>
    public IReadOnlyList<KvPrefix> Prefixes { get; }
    /// <summary>The container, when read from a file.</summary>
    public Snapshot? Snapshot { get; }

    /// <summary>Whether metadata marks a KV-cache snapshot.</summary>
    public static bool IsKv(IReadOnlyDictionary<string, string> metadata) =>
        metadata.TryGetValue(KindKey, out string? kind) && kind == Kind;

    /// <exception cref="ThawFormatException">Not a valid KV snapshot.</exception>
    public static KvSnapshot Read(string path) => From(SnapshotReader.Read(path));

    /// <exception cref="ThawFormatException">The snapshot is not of kind kv-cache, or its description disagrees with its regions.</exception>
    public static KvSnapshot From(Snapshot s)
    {
        KvSnapshot kv = Validate(s.Path, s.Metadata, s.Tensors.Select(t => new TensorSpec(t.Name, t.DType, t.Shape)).ToList());
        return new KvSnapshot(kv.Path, kv.Layout, kv.Model, kv.Prefixes, s);
    }

    /// <summary>Checks a KV description against the regions it will sit beside (what a writer calls before writing).</summary>
    /// <exception cref="ThawFormatException">The first field that is missing, out of range, or disagrees with a region.</exception>
    public static KvSnapshot Validate(string path, IReadOnlyDictionary<string, string> metadata, IReadOnlyList<TensorSpec> regions)
    {
        if (!metadata.TryGetValue(KindKey, out string? kind))
            throw Bad(path, $"not a KV snapshot (no '{KindKey}' metadata; a weights snapshot?)");
        if (kind != Kind)
            throw Bad(path, $"'{KindKey}' is '{Clip(kind)}', not '{Kind}'");
        if (!metadata.TryGetValue(DescriptionKey, out string? text))
            throw Bad(path, $"KV snapshot has no '{DescriptionKey}' metadata");
        // Strict first (UTF-8, depth, repeated keys, lone surrogates): reading the document cannot throw after it.
        JsonDocument? document = StrictJson.TryParse(System.Text.Encoding.UTF8.GetBytes(text), 4, out string problem);
        if (document is null)
            throw Bad(path, $"'{DescriptionKey}' {problem}");
        using (document)
        {
            var d = new Fields(path, document.RootElement);
            long version = d.Integer("version", 1, 1_000_000);
            if (version != DescriptionVersion)
                throw Bad(path, $"KV description version {version} is not supported (this reader knows {DescriptionVersion})");
            string hash = d.Text("hash");
            if (hash != KvHash.Algorithm)
                throw Bad(path, $"KV field 'hash' is '{Clip(hash)}' (this reader knows '{KvHash.Algorithm}')");
            string model = d.Text("model");
            string tensorLayout = d.Text("tensor_layout");
            bool vllm = tensorLayout.StartsWith(KvLayout.VllmPrefix, StringComparison.Ordinal);
            if (!vllm && tensorLayout != KvLayout.Transformers)
                throw Bad(path, $"KV field 'tensor_layout' is '{Clip(tensorLayout)}' (known: '{KvLayout.Transformers}', '{KvLayout.VllmPrefix}<backend>/<order>')");
            int layers = (int)d.Integer("layers", 1, MaxLayers);
            int kvHeads = (int)d.Integer("kv_heads", 1, MaxKvHeads);
            int headDim = (int)d.Integer("head_dim", 1, MaxHeadDim);
            int blockSize = (int)d.Integer("block_size", 1, MaxBlockSize);
            string dtypeName = d.Text("dtype");
            if (!DTypes.TryParse(dtypeName, out DType dtype) || dtype.BitsPerElement() % 8 != 0)
                throw Bad(path, $"KV field 'dtype' is '{Clip(dtypeName)}' (a whole-byte dtype name such as BF16)");
            int? blockDim = vllm ? (int)d.Integer("block_dim", 0, MaxRegionDims - 1) : d.Absent("block_dim");
            IReadOnlyList<string> layerNames = vllm ? d.Strings("layer_names", layers, layers) : d.AbsentList("layer_names");
            if (vllm && layerNames.Distinct(StringComparer.Ordinal).Count() != layerNames.Count)
                throw Bad(path, "KV field 'layer_names' repeats a name");
            var layout = new KvLayout(tensorLayout, layers, kvHeads, headDim, dtype, blockSize, blockDim, layerNames);

            JsonElement prefixArray = d.Array("prefixes", 1, MaxPrefixes);
            var prefixes = new List<KvPrefix>(prefixArray.GetArrayLength());
            foreach (JsonElement item in prefixArray.EnumerateArray())
            {
                var p = new Fields(path, item, $"prefixes[{prefixes.Count}].");
                long tokens = p.Integer("tokens", 1, MaxPrefixTokens);
                long blocks = (tokens + blockSize - 1) / blockSize;
                if (vllm && tokens % blockSize != 0)
                    throw Bad(path, $"KV field 'prefixes[{prefixes.Count}].tokens' is {tokens}, not a whole number of {blockSize}-token blocks (a vLLM layout saves whole blocks)");
                IReadOnlyList<string> hashes = p.Strings("block_hashes", blocks, blocks);
                foreach (string h in hashes)
                    if (h.Length != 64 || !h.All(c => c is >= '0' and <= '9' or >= 'a' and <= 'f'))
                        throw Bad(path, $"KV field 'prefixes[{prefixes.Count}].block_hashes' holds '{Clip(h)}', not 64 lowercase hex digits");
                p.NoOthers();
                prefixes.Add(new KvPrefix(prefixes.Count, tokens, hashes));
            }
            d.NoOthers();
            CheckRegions(path, layout, prefixes, regions);
            return new KvSnapshot(path, layout, model, prefixes, null);
        }
    }

    /// <summary>For a snapshot of kind kv-cache (after its region checksums are verified): its description
    /// against its regions, and every prefix hash against the stored token ids. Other snapshots pass.</summary>
    /// <exception cref="ThawFormatException">The KV description or a prefix hash is wrong.</exception>
    public static void VerifyIfKv(Snapshot s)
    {
        if (IsKv(s.Metadata))
            From(s).VerifyPrefixHashes();
    }

    /// <summary>Recomputes every prefix's block hashes from its token ids in the file (run after the region
    /// checksums are verified: the token ids are then the bytes that were written).</summary>
    /// <exception cref="ThawFormatException">A prefix's recorded hashes do not belong to its tokens and this model.</exception>
    public void VerifyPrefixHashes()
    {
        Snapshot s = Snapshot ?? throw new InvalidOperationException("a KV description without its file");
        using var file = File.OpenHandle(s.Path, FileMode.Open, FileAccess.Read, FileShare.Read);
        foreach (KvPrefix p in Prefixes)
        {
            TensorEntry region = s.Tensors[s.IndexOf(p.TokensRegion)];
            byte[] bytes = new byte[region.Length];
            int done = 0;
            while (done < bytes.Length)
            {
                int n = RandomAccess.Read(file, bytes.AsSpan(done), s.FileOffsetOf(region) + done);
                if (n == 0)
                    throw Bad(s.Path, $"file shrank while KV region '{region.Name}' was read");
                done += n;
            }
            long[] tokens = new long[p.Tokens];
            for (int i = 0; i < tokens.Length; i++)
                tokens[i] = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(8 * i));
            List<string> actual = KvHash.Blocks(Model, tokens, Layout.BlockSize);
            for (int b = 0; b < actual.Count; b++)
                if (actual[b] != p.BlockHashes[b])
                    throw Bad(s.Path, $"KV prefix {p.Index}: block {b}'s recorded hash is not the {KvHash.Algorithm} of its token ids and model");
        }
    }

    /// <summary>The regions must be exactly those the description implies, each with its implied dtype and shape.</summary>
    private static void CheckRegions(string path, KvLayout layout, IReadOnlyList<KvPrefix> prefixes, IReadOnlyList<TensorSpec> regions)
    {
        var byName = new Dictionary<string, TensorSpec>(StringComparer.Ordinal);
        foreach (TensorSpec r in regions)
            byName[r.Name] = r;
        var expected = new HashSet<string>(StringComparer.Ordinal);
        long perBlock = checked((long)layout.BlockSize * layout.KvHeads * 2 * layout.HeadDim);
        foreach (KvPrefix p in prefixes)
        {
            expected.Add(Expect(path, byName, KvNames.Tokens(p.Index), DType.I64, [p.Tokens]).Name);
            for (int l = 0; l < layout.Layers; l++)
            {
                if (!layout.IsVllm)
                {
                    long[] shape = [1, layout.KvHeads, p.Tokens, layout.HeadDim];
                    expected.Add(Expect(path, byName, KvNames.Keys(p.Index, l), layout.DType, shape).Name);
                    expected.Add(Expect(path, byName, KvNames.Values(p.Index, l), layout.DType, shape).Name);
                    continue;
                }
                string name = KvNames.Paged(p.Index, l);
                TensorSpec r = Expect(path, byName, name, layout.DType, null);
                int blockDim = layout.BlockDim!.Value;
                if (r.Shape.Length < 2 || r.Shape.Length > MaxRegionDims || blockDim >= r.Shape.Length)
                    throw Bad(path, $"KV region '{name}' has {r.Shape.Length} dimensions; a paged layer needs 2..{MaxRegionDims} with the block dimension {blockDim} among them");
                long blocks = p.Tokens / layout.BlockSize;
                Int128 others = 1;  // a zero dimension lets the others be as large as the reader allows: no overflow here
                for (int i = 0; i < r.Shape.Length && others <= perBlock; i++)
                    if (i != blockDim)
                        others *= r.Shape[i];
                if (r.Shape[blockDim] != blocks || others != perBlock)
                    throw Bad(path, $"KV region '{name}' has shape [{string.Join(", ", r.Shape)}]; {blocks} blocks along dimension {blockDim} " +
                        $"of {layout.BlockSize} tokens × {layout.KvHeads} heads × 2 × {layout.HeadDim} elements each were described");
                expected.Add(name);
            }
        }
        // Every expected region was found; anything else is a region the description does not explain.
        TensorSpec? extra = regions.FirstOrDefault(r => !expected.Contains(r.Name));
        if (extra is not null)
            throw Bad(path, $"KV snapshot holds {regions.Count} regions, its description accounts for {expected.Count} (unexpected: '{Clip(extra.Name)}')");
    }

    private static TensorSpec Expect(string path, Dictionary<string, TensorSpec> byName, string name, DType dtype, long[]? shape)
    {
        if (!byName.TryGetValue(name, out TensorSpec? r))
            throw Bad(path, $"KV snapshot lacks region '{name}'");
        if (r.DType != dtype)
            throw Bad(path, $"KV region '{name}' is {r.DType}, the description says {dtype}");
        if (shape is not null && !r.Shape.AsSpan().SequenceEqual(shape))
            throw Bad(path, $"KV region '{name}' has shape [{string.Join(", ", r.Shape)}], the description implies [{string.Join(", ", shape)}]");
        return r;
    }

    internal static ThawFormatException Bad(string path, string problem) => new(path, problem);

    internal static string Clip(string text) => text.Length > 80 ? text[..77] + "..." : text;

    /// <summary>Typed, bounded access to one JSON object; remembers which fields were read so that unknown ones are refused.</summary>
    private readonly struct Fields
    {
        private readonly string _path;
        private readonly JsonElement _object;
        private readonly string _prefix;
        private readonly HashSet<string> _seen;

        public Fields(string path, JsonElement element, string prefix = "")
        {
            if (element.ValueKind != JsonValueKind.Object)
                throw Bad(path, $"KV field '{(prefix.Length == 0 ? "thaw.kv" : prefix.TrimEnd('.'))}' is not a JSON object");
            _path = path;
            _object = element;
            _prefix = prefix;
            _seen = new HashSet<string>(StringComparer.Ordinal);
        }

        private JsonElement Get(string name, JsonValueKind kind, string what)
        {
            _seen.Add(name);
            if (!_object.TryGetProperty(name, out JsonElement value))
                throw Bad(_path, $"KV field '{_prefix}{name}' is missing");
            if (value.ValueKind != kind)
                throw Bad(_path, $"KV field '{_prefix}{name}' is not {what}");
            return value;
        }

        public long Integer(string name, long min, long max)
        {
            JsonElement v = Get(name, JsonValueKind.Number, "an integer");
            if (!v.TryGetInt64(out long n) || n < min || n > max)
                throw Bad(_path, $"KV field '{_prefix}{name}' is {Clip(v.GetRawText())} (an integer {min}..{max})");
            return n;
        }

        public string Text(string name)
        {
            string s = Get(name, JsonValueKind.String, "a string").GetString()!;
            if (s.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(s) > MaxStringBytes || s.Contains('\0'))
                throw Bad(_path, $"KV field '{_prefix}{name}' is empty, holds NUL or is longer than {MaxStringBytes} bytes");
            return s;
        }

        public JsonElement Array(string name, long min, long max)
        {
            JsonElement v = Get(name, JsonValueKind.Array, "an array");
            int n = v.GetArrayLength();
            if (n < min || n > max)
                throw Bad(_path, $"KV field '{_prefix}{name}' has {n} entries ({min}..{max})");
            return v;
        }

        public IReadOnlyList<string> Strings(string name, long min, long max)
        {
            var list = new List<string>();
            int i = 0;
            foreach (JsonElement item in Array(name, min, max).EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String)
                    throw Bad(_path, $"KV field '{_prefix}{name}[{i}]' is not a string");
                string s = item.GetString()!;
                if (s.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(s) > MaxStringBytes || s.Contains('\0'))
                    throw Bad(_path, $"KV field '{_prefix}{name}[{i}]' is empty, holds NUL or is longer than {MaxStringBytes} bytes");
                list.Add(s);
                i++;
            }
            return list;
        }

        public int? Absent(string name)
        {
            _seen.Add(name);
            if (_object.TryGetProperty(name, out _))
                throw Bad(_path, $"KV field '{_prefix}{name}' belongs to vLLM layouts only");
            return null;
        }

        public IReadOnlyList<string> AbsentList(string name)
        {
            Absent(name);
            return [];
        }

        public void NoOthers()
        {
            foreach (JsonProperty p in _object.EnumerateObject())
                if (!_seen.Contains(p.Name))
                    throw Bad(_path, $"KV field '{_prefix}{Clip(p.Name)}' is unknown");
        }
    }
}
