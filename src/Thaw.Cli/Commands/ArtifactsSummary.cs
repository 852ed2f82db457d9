using System.Text.Json;
using Thaw.Interop.Format;

namespace Thaw.Cli.Commands;

/// <summary>What <c>thaw info</c> shows of an artifacts snapshot (docs/FORMAT.md, "Artifacts
/// snapshots"): the environment its compiled files are valid for and each set's files. Display
/// only: the one validating reader of the description is python/thaw_vllm/artifacts.py, which
/// checks it before any file is written.</summary>
internal static class ArtifactsSummary
{
    private const string KindKey = "thaw.kind";
    private const string Kind = "compile-artifacts";
    private const string DescriptionKey = "thaw.artifacts";

    public static bool IsArtifacts(Snapshot s) =>
        s.Metadata.TryGetValue(KindKey, out string? kind) && kind == Kind;

    public static void Write(Snapshot s, TextWriter o)
    {
        s.Metadata.TryGetValue(DescriptionKey, out string? text);
        try
        {
            using JsonDocument doc = JsonDocument.Parse(text ?? "", new JsonDocumentOptions { MaxDepth = 8 });
            JsonElement root = doc.RootElement;
            o.WriteLine($"kind      compiled artifacts (torch.compile / vLLM caches)");
            if (root.TryGetProperty("environment", out JsonElement env) && env.ValueKind == JsonValueKind.Object)
                foreach (JsonProperty field in env.EnumerateObject().OrderBy(p => p.Name, StringComparer.Ordinal))
                    o.WriteLine($"valid for {field.Name} = {field.Value}");
            var lengths = s.Tensors.ToDictionary(t => t.Name, t => t.Length, StringComparer.Ordinal);
            if (root.TryGetProperty("sets", out JsonElement sets) && sets.ValueKind == JsonValueKind.Object)
                foreach (JsonProperty set in sets.EnumerateObject())
                {
                    if (set.Value.ValueKind != JsonValueKind.Array) continue;
                    long bytes = set.Value.EnumerateArray()
                        .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("region", out var r) && r.ValueKind == JsonValueKind.String)
                        .Sum(e => lengths.GetValueOrDefault(e.GetProperty("region").GetString()!));
                    o.WriteLine($"files     {set.Name}: {set.Value.GetArrayLength()} files, {Units.Size(bytes)}");
                }
            if (root.TryGetProperty("blob", out JsonElement blob) && blob.ValueKind == JsonValueKind.String)
                o.WriteLine($"blob      PyTorch cache artifacts, {Units.Size(lengths.GetValueOrDefault(blob.GetString()!))}");
        }
        catch (JsonException)
        {
            o.WriteLine($"kind      compiled artifacts; metadata '{DescriptionKey}' is not readable JSON (a restore refuses it)");
        }
    }
}
