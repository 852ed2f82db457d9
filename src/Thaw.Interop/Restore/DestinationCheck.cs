using System.Text;
using System.Text.Json;
using Thaw.Interop.Format;

namespace Thaw.Interop.Restore;

/// <summary>What a destination requires of a snapshot beyond each tensor's dtype, shape and
/// size (which <see cref="RestorePlan.Create"/> checks).</summary>
/// <param name="Strict">The destination names every region and every alias of the snapshot, and nothing else;
/// otherwise names the snapshot lacks are skipped (a partial restore).</param>
/// <param name="Metadata">Metadata values the snapshot must hold; a null value: the key must be absent.</param>
/// <param name="MissingHint">Appended to the error for a required key the snapshot lacks (how to make a fitting one).</param>
public sealed record DestinationRequirements(bool Strict = false, IReadOnlyDictionary<string, string?>? Metadata = null,
    string? MissingHint = null)
{
    /// <summary>Parses <c>{"strict": bool, "metadata": {key: string|null}, "missing_hint": string}</c>.</summary>
    /// <exception cref="ArgumentException">Not that shape.</exception>
    public static DestinationRequirements Parse(string json)
    {
        using JsonDocument document = StrictJson.TryParse(Encoding.UTF8.GetBytes(json), 3, out string problem)
            ?? throw new ArgumentException($"restore requirements {problem}");
        JsonElement root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            throw new ArgumentException("restore requirements must be a JSON object");
        bool strict = false;
        string? hint = null;
        var metadata = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (JsonProperty p in root.EnumerateObject())
        {
            switch (p.Name)
            {
                case "strict" when p.Value.ValueKind is JsonValueKind.True or JsonValueKind.False:
                    strict = p.Value.GetBoolean();
                    break;
                case "missing_hint" when p.Value.ValueKind == JsonValueKind.String:
                    hint = p.Value.GetString();
                    break;
                case "metadata" when p.Value.ValueKind == JsonValueKind.Object:
                    foreach (JsonProperty m in p.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind switch
                        {
                            JsonValueKind.String => m.Value.GetString(),
                            JsonValueKind.Null => null,
                            _ => throw new ArgumentException($"restore requirement for metadata {NameRules.Quote(m.Name)} is not a string or null"),
                        };
                    break;
                default:
                    throw new ArgumentException($"restore requirements: {NameRules.Quote(p.Name)} is unknown or of the wrong type");
            }
        }
        return new DestinationRequirements(strict, metadata, hint);
    }
}

/// <summary>The one place a restore is checked against its destination as a whole: required
/// metadata (fingerprints), coverage of every region and alias (strict), and aliases — names
/// recorded in the metadata <see cref="AliasesKey"/> whose bytes are those of another region.</summary>
public static class DestinationCheck
{
    /// <summary>JSON object alias name → the name of the region holding its bytes (tied weights).</summary>
    public const string AliasesKey = "thaw.aliases";

    /// <summary>The targets to plan: alias names resolved to their region, each region once.</summary>
    /// <exception cref="ThawMismatchException">Metadata that differs, or (strict) names that do not cover the snapshot.</exception>
    /// <exception cref="ThawFormatException">An aliases entry that is not a JSON object of region names.</exception>
    public static List<RestoreTarget> Resolve(Snapshot snapshot, IReadOnlyList<RestoreTarget> targets, DestinationRequirements requirements)
    {
        CheckMetadata(snapshot, requirements);
        Dictionary<string, string> aliases = Aliases(snapshot);
        var resolved = new List<RestoreTarget>(targets.Count);
        var named = new HashSet<string>(StringComparer.Ordinal);
        var placed = new HashSet<string>(StringComparer.Ordinal);
        // A region is planned once: under its own name when the destination has it, else under
        // its first alias. The caller copies it to any other alias destination (the
        // description returned with the restore lists the aliases).
        foreach (RestoreTarget target in targets.OrderBy(t => snapshot.IndexOf(t.Name) < 0 ? 1 : 0))
        {
            named.Add(target.Name);
            string region = snapshot.IndexOf(target.Name) < 0 && aliases.TryGetValue(target.Name, out string? original)
                ? original : target.Name;
            if (!requirements.Strict && snapshot.IndexOf(region) < 0)
                continue;  // a partial restore: names the snapshot lacks are left alone
            if (snapshot.IndexOf(region) < 0 || placed.Add(region))
                resolved.Add(target with { Name = region });
        }
        if (requirements.Strict)
        {
            var known = new HashSet<string>(snapshot.Tensors.Select(t => t.Name), StringComparer.Ordinal);
            known.UnionWith(aliases.Keys);
            string[] missing = known.Where(n => !named.Contains(n)).Order(StringComparer.Ordinal).ToArray();
            string[] unexpected = named.Where(n => !known.Contains(n)).Order(StringComparer.Ordinal).ToArray();
            if (missing.Length > 0 || unexpected.Length > 0)
                throw new ThawMismatchException($"{snapshot.Path}: snapshot and destination differ: missing from the destination " +
                    $"{List(missing)}; missing from the snapshot {List(unexpected)}");
        }
        return resolved;
    }

    private static void CheckMetadata(Snapshot snapshot, DestinationRequirements requirements)
    {
        foreach (var (key, expected) in requirements.Metadata ?? new Dictionary<string, string?>())
        {
            bool present = snapshot.Metadata.TryGetValue(key, out string? actual);
            if (expected is null && present)
                throw new ThawMismatchException($"{snapshot.Path}: the snapshot holds metadata {NameRules.Quote(key)}, which the destination requires absent");
            if (expected is not null && !present)
                throw new ThawMismatchException($"{snapshot.Path}: the snapshot has no metadata {NameRules.Quote(key)}" +
                    (requirements.MissingHint is { } hint ? $" ({hint})" : ""));
            if (expected is not null && actual != expected)
                throw new ThawMismatchException($"{snapshot.Path}: the snapshot was frozen with {key}={NameRules.Quote(actual!)}, " +
                    $"the destination has {key}={NameRules.Quote(expected)}");
        }
    }

    private static Dictionary<string, string> Aliases(Snapshot snapshot)
    {
        var aliases = new Dictionary<string, string>(StringComparer.Ordinal);
        if (!snapshot.Metadata.TryGetValue(AliasesKey, out string? text))
            return aliases;
        using JsonDocument document = StrictJson.TryParse(Encoding.UTF8.GetBytes(text), 2, out string problem)
            ?? throw new ThawFormatException(snapshot.Path, $"metadata {AliasesKey} {problem}");
        if (document.RootElement.ValueKind != JsonValueKind.Object)
            throw new ThawFormatException(snapshot.Path, $"metadata {AliasesKey} is not a JSON object");
        foreach (JsonProperty p in document.RootElement.EnumerateObject())
        {
            string? original = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() : null;
            if (original is null || snapshot.IndexOf(original) < 0 || snapshot.IndexOf(p.Name) >= 0)
                throw new ThawFormatException(snapshot.Path, $"metadata {AliasesKey}: alias {NameRules.Quote(p.Name)} does not name " +
                    "another tensor of the snapshot");
            aliases[p.Name] = original;
        }
        return aliases;
    }

    private static string List(string[] names) =>
        names.Length == 0 ? "nothing" : string.Join(", ", names.Take(5).Select(NameRules.Quote)) + (names.Length > 5 ? $" and {names.Length - 5} more" : "");
}
