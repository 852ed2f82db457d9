using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Thaw.Cli;

/// <summary>Writes a synthetic Llama-shaped safetensors checkpoint of random weights,
/// so the whole pipeline can be run and measured without downloading a model.</summary>
internal static class CheckpointGenerator
{
    internal sealed record Tensor(string Name, string DType, long[] Shape)
    {
        public long Bytes => Shape.Aggregate(1L, (a, b) => a * b) * (DType == "F32" ? 4 : 2);
    }

    /// <summary>Tensors of a Llama-like model of hidden size h whose total is near targetBytes.</summary>
    internal static List<Tensor> LlamaShaped(long targetBytes, int hidden = 1024, int vocab = 32000)
    {
        long intermediate = hidden * 7 / 2, kv = hidden / 4;
        long perLayer = 2 * (2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * intermediate) + 2 * 4 * hidden;
        long fixedBytes = 2 * 2L * vocab * hidden + 4 * hidden;
        int layers = (int)Math.Max(1, (targetBytes - fixedBytes) / perLayer);
        var tensors = new List<Tensor> { new("model.embed_tokens.weight", "F16", [vocab, hidden]) };
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            tensors.Add(new(p + "self_attn.q_proj.weight", "F16", [hidden, hidden]));
            tensors.Add(new(p + "self_attn.k_proj.weight", "F16", [kv, hidden]));
            tensors.Add(new(p + "self_attn.v_proj.weight", "F16", [kv, hidden]));
            tensors.Add(new(p + "self_attn.o_proj.weight", "F16", [hidden, hidden]));
            tensors.Add(new(p + "mlp.gate_proj.weight", "BF16", [intermediate, hidden]));
            tensors.Add(new(p + "mlp.up_proj.weight", "BF16", [intermediate, hidden]));
            tensors.Add(new(p + "mlp.down_proj.weight", "BF16", [hidden, intermediate]));
            tensors.Add(new(p + "input_layernorm.weight", "F32", [hidden]));
            tensors.Add(new(p + "post_attention_layernorm.weight", "F32", [hidden]));
        }
        tensors.Add(new("model.norm.weight", "F32", [hidden]));
        tensors.Add(new("lm_head.weight", "F16", [vocab, hidden]));
        return tensors;
    }

    internal static long Generate(string directory, long targetBytes, int shardCount, int seed, Action<long, long>? progress)
    {
        Directory.CreateDirectory(directory);
        List<Tensor> tensors = LlamaShaped(targetBytes);
        long total = tensors.Sum(t => t.Bytes);
        long perShard = (total + shardCount - 1) / shardCount;
        var shards = new List<List<Tensor>> { new() };
        long inShard = 0;
        foreach (Tensor t in tensors)
        {
            if (inShard >= perShard && shards.Count < shardCount)
            {
                shards.Add([]);
                inShard = 0;
            }
            shards[^1].Add(t);
            inShard += t.Bytes;
        }
        var random = new Random(seed);
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        long written = 0;
        byte[] buffer = new byte[8 << 20];
        for (int s = 0; s < shards.Count; s++)
        {
            string name = shards.Count == 1 ? "model.safetensors" : $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            byte[] header = Header(shards[s]);
            using var stream = new FileStream(Path.Combine(directory, name), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            byte[] prefix = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (Tensor t in shards[s])
            {
                weightMap[t.Name] = name;
                for (long left = t.Bytes; left > 0;)
                {
                    int n = (int)Math.Min(left, buffer.Length);
                    random.NextBytes(buffer.AsSpan(0, n));
                    stream.Write(buffer, 0, n);
                    left -= n;
                    written += n;
                    progress?.Invoke(written, total);
                }
            }
        }
        if (shards.Count > 1)
        {
            using var index = new FileStream(Path.Combine(directory, "model.safetensors.index.json"), FileMode.Create);
            using var json = new Utf8JsonWriter(index, new JsonWriterOptions { Indented = true });
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", total);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (tensor, shard) in weightMap)
                json.WriteString(tensor, shard);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        return total;
    }

    private static byte[] Header(List<Tensor> tensors)
    {
        using var memory = new MemoryStream();
        using (var json = new Utf8JsonWriter(memory))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            json.WriteString("format", "pt");
            json.WriteEndObject();
            long offset = 0;
            foreach (Tensor t in tensors)
            {
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType);
                json.WriteStartArray("shape");
                foreach (long d in t.Shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + t.Bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += t.Bytes;
            }
            json.WriteEndObject();
        }
        // safetensors pads its header with spaces to a multiple of 8.
        int padded = (int)((memory.Length + 7) / 8 * 8);
        byte[] header = Enumerable.Repeat((byte)' ', padded).ToArray();
        memory.ToArray().CopyTo(header, 0);
        return header;
    }
}
