using System.Text.Json;
using Thaw.Interop.Format;

namespace Thaw.Interop.Safetensors;

/// <summary>A Hugging Face checkpoint: a directory of *.safetensors shards (with an
/// optional model.safetensors.index.json naming them), or a single .safetensors file.</summary>
public sealed class HuggingFaceCheckpoint
{
    /// <summary>The index file that maps tensor names to shards.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private HuggingFaceCheckpoint(string path, IReadOnlyList<SafetensorsFile> shards)
    {
        Path = path;
        Shards = shards;
    }

    /// <summary>The directory or file the checkpoint was opened from.</summary>
    public string Path { get; }
    /// <summary>The shards, validated, in name order.</summary>
    public IReadOnlyList<SafetensorsFile> Shards { get; }
    /// <summary>Bytes of tensor data in all shards.</summary>
    public long TensorBytes => Shards.Sum(s => s.Tensors.Sum(t => t.Length));
    /// <summary>Tensors in all shards.</summary>
    public int TensorCount => Shards.Sum(s => s.Tensors.Count);

    /// <exception cref="FileNotFoundException">No such file or directory, or no shards in it.</exception>
    /// <exception cref="ThawFormatException">A shard or the index is malformed or inconsistent.</exception>
    public static HuggingFaceCheckpoint Open(string path)
    {
        if (File.Exists(path))
            return new HuggingFaceCheckpoint(path, [SafetensorsFile.Read(path)]);
        if (!Directory.Exists(path))
            throw new FileNotFoundException($"no checkpoint at {path}: not a file or directory", path);

        string indexPath = System.IO.Path.Combine(path, IndexFileName);
        List<string> shardNames;
        Dictionary<string, string>? weightMap = null;
        if (File.Exists(indexPath))
        {
            weightMap = ReadWeightMap(indexPath);
            shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        }
        else
        {
            shardNames = Directory.GetFiles(path, "*.safetensors").Select(System.IO.Path.GetFileName).Order(StringComparer.Ordinal).ToList()!;
        }
        if (shardNames.Count == 0)
            throw new FileNotFoundException($"no *.safetensors files in {path}", path);

        var shards = new List<SafetensorsFile>();
        var owner = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string shardName in shardNames)
        {
            string shardPath = System.IO.Path.Combine(path, shardName);
            if (!File.Exists(shardPath))
                throw new FileNotFoundException($"{indexPath} names shard {shardName}, which does not exist", shardPath);
            SafetensorsFile shard = SafetensorsFile.Read(shardPath);
            foreach (SafetensorsTensor tensor in shard.Tensors)
                if (!owner.TryAdd(tensor.Name, shardName))
                    throw new ThawFormatException(shardPath, $"tensor '{tensor.Name}' also appears in {owner[tensor.Name]}");
            shards.Add(shard);
        }
        if (weightMap is not null)
        {
            foreach (var (tensor, shardName) in weightMap)
                if (!owner.TryGetValue(tensor, out string? actual) || actual != shardName)
                    throw new ThawFormatException(indexPath, $"weight_map puts {NameRules.Quote(tensor)} in {shardName}, but {(actual is null ? "no shard has it" : "it is in " + actual)}");
        }
        return new HuggingFaceCheckpoint(path, shards);
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        using JsonDocument document = ParseJson(indexPath);
        if (document.RootElement.ValueKind != JsonValueKind.Object ||
            !document.RootElement.TryGetProperty("weight_map", out JsonElement map) || map.ValueKind != JsonValueKind.Object)
            throw new ThawFormatException(indexPath, "no weight_map object");
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (JsonProperty entry in map.EnumerateObject())
        {
            string? shard = entry.Value.ValueKind == JsonValueKind.String ? entry.Value.GetString() : null;
            // Shard names are plain file names inside the checkpoint directory, never paths.
            if (shard is null || NameRules.Problem(shard) is not null || shard != System.IO.Path.GetFileName(shard) || shard is "." or "..")
                throw new ThawFormatException(indexPath, $"weight_map entry {NameRules.Quote(entry.Name)} names {NameRules.Quote(shard ?? "")}, not a file name in the checkpoint directory");
            result[entry.Name] = shard;
        }
        return result;
    }

    private static JsonDocument ParseJson(string path)
    {
        var info = new FileInfo(path);
        if (info.Length > SafetensorsFile.MaxHeaderBytes)
            throw new ThawFormatException(path, $"{info.Length} bytes is too large for an index");
        return SafetensorsFile.ParseJson(path, File.ReadAllBytes(path), "the index");
    }
}
