using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Kv;

/// <summary>A validated KV snapshot as JSON (for `thaw_kv_info` and tools): layout, model, prefixes.</summary>
public static class KvJson
{
    /// <summary>The description as one JSON object: path, kind, model, hash, layout fields, tensor_bytes, prefixes.</summary>
    public static string Describe(KvSnapshot kv)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            KvLayout l = kv.Layout;
            json.WriteStartObject();
            json.WriteString("path", kv.Path);
            json.WriteString("kind", KvSnapshot.Kind);
            json.WriteString("model", kv.Model);
            json.WriteString("hash", kv.HashAlgorithm);
            json.WriteString("tensor_layout", l.TensorLayout);
            json.WriteNumber("layers", l.Layers);
            json.WriteNumber("kv_heads", l.KvHeads);
            json.WriteNumber("head_dim", l.HeadDim);
            json.WriteString("dtype", l.DType.ToString());
            json.WriteNumber("block_size", l.BlockSize);
            if (l.BlockDim is int blockDim)
                json.WriteNumber("block_dim", blockDim);
            json.WriteStartArray("layer_names");
            foreach (string name in l.LayerNames)
                json.WriteStringValue(name);
            json.WriteEndArray();
            if (kv.Snapshot is not null)
                json.WriteNumber("tensor_bytes", kv.Snapshot.TensorBytes);
            json.WriteStartArray("prefixes");
            foreach (KvPrefix p in kv.Prefixes)
            {
                json.WriteStartObject();
                json.WriteNumber("index", p.Index);
                json.WriteNumber("tokens", p.Tokens);
                json.WriteStartArray("block_hashes");
                foreach (string h in p.BlockHashes)
                    json.WriteStringValue(h);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }
}
