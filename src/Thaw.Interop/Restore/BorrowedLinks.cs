using System.Globalization;
using System.Text.Json;
using Core = Thaw.Interop.Native.Interop.ThawCore;

namespace Thaw.Interop.Restore;

/// <summary>Which other devices' host links a file restore borrows.</summary>
public enum BorrowMode
{
    /// <summary>The destination's own link only (the default).</summary>
    Off,
    /// <summary>Every other device of the destination's kind on this machine.</summary>
    Auto,
    /// <summary>The devices named in <see cref="BorrowedLinks.Devices"/>.</summary>
    Devices,
}

/// <summary>Borrowed links (docs/MULTI_GPU.md, "Borrowed links"): lanes on helper devices copy a share of
/// a restore's bytes host to device into bounce memory of the helper and forward it device to device
/// into the destination, so that several GPUs' host links carry one GPU's restore.</summary>
public sealed record BorrowedLinks
{
    /// <summary>When set (auto, off, or ordinals such as 1,2,3) it overrides what the caller said.</summary>
    public const string EnvironmentVariable = "THAW_BORROW";

    /// <summary>No borrowed links.</summary>
    public static readonly BorrowedLinks Off = new() { Mode = BorrowMode.Off };
    /// <summary>Every other device of the destination's kind.</summary>
    public static readonly BorrowedLinks Auto = new() { Mode = BorrowMode.Auto };

    /// <summary>Off, auto, or the named devices.</summary>
    public BorrowMode Mode { get; init; }
    /// <summary>The helper ordinals (<see cref="BorrowMode.Devices"/>); each once, none the destination.</summary>
    public IReadOnlyList<int> Devices { get; init; } = [];
    /// <summary>Relative link rates, the destination's first, then each of <see cref="Devices"/>; null: equal shares.</summary>
    public IReadOnlyList<double>? Weights { get; init; }
    /// <summary>Reader threads per helper (0: the core's default, 2; at most 8).</summary>
    public int LanesPerHelper { get; init; }

    /// <summary>The named helpers.</summary>
    public static BorrowedLinks Of(params int[] devices) => new() { Mode = BorrowMode.Devices, Devices = devices };

    /// <summary>"auto", "off", or a comma-separated list of device ordinals (what <see cref="EnvironmentVariable"/> holds).</summary>
    /// <exception cref="ArgumentException">Anything else.</exception>
    public static BorrowedLinks Parse(string text)
    {
        string trimmed = text.Trim();
        if (trimmed is "auto")
            return Auto;
        if (trimmed is "off" or "")
            return Off;
        string[] parts = trimmed.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length > Core.MaxHelpers)
            throw new ArgumentException($"borrowed links: {parts.Length} devices named; at most {Core.MaxHelpers}");
        var devices = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out devices[i]))
                throw new ArgumentException($"borrowed links: '{text}' is not auto, off or a list of device ordinals such as 1,2,3");
        return Of(devices);
    }

    /// <summary>The JSON the Python shim sends: "auto", "off", false, [1, 2], or
    /// {"devices": "auto" | [1, 2], "weights": [w0, w1, w2], "lanes": 2}.</summary>
    /// <exception cref="ArgumentException">Any other shape, or more than the core takes.</exception>
    public static BorrowedLinks ParseJson(string json)
    {
        using JsonDocument document = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 4 });
        JsonElement root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            return FromDevices(root);
        BorrowedLinks links = Off;
        int lanes = 0;
        double[]? weights = null;
        foreach (JsonProperty p in root.EnumerateObject())
        {
            switch (p.Name)
            {
                case "devices":
                    links = FromDevices(p.Value);
                    break;
                case "weights":
                    weights = Numbers(p.Value, Core.MaxHelpers + 1, "weights").Select(n => n.GetDouble()).ToArray();
                    break;
                case "lanes":
                    if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out lanes) || lanes < 0 || lanes > Core.MaxHelperLanes)
                        throw new ArgumentException($"borrowed links: lanes must be an integer from 0 to {Core.MaxHelperLanes}, not {p.Value.GetRawText()}");
                    break;
                default:
                    throw new ArgumentException($"borrowed links: unknown key '{p.Name}' (devices, weights, lanes)");
            }
        }
        if (weights is not null && links.Mode != BorrowMode.Devices)
            throw new ArgumentException("borrowed links: weights need the devices named (the destination's weight first, then each device's)");
        return links with { Weights = weights, LanesPerHelper = lanes };
    }

    private static BorrowedLinks FromDevices(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString() is "auto" or "off" ? Parse(value.GetString()!)
            : throw new ArgumentException($"borrowed links: \"{value.GetString()}\" is not \"auto\" or \"off\""),
        JsonValueKind.False or JsonValueKind.Null => Off,
        JsonValueKind.Array => Of(Numbers(value, Core.MaxHelpers, "devices").Select(Ordinal).ToArray()),
        _ => throw new ArgumentException($"borrowed links: expected \"auto\", \"off\" or a list of device ordinals, not {value.GetRawText()}"),
    };

    private static int Ordinal(JsonElement n) =>
        n.TryGetInt32(out int o) ? o : throw new ArgumentException($"borrowed links: {n.GetRawText()} is not a device ordinal");

    private static List<JsonElement> Numbers(JsonElement array, int limit, string what)
    {
        if (array.ValueKind != JsonValueKind.Array)
            throw new ArgumentException($"borrowed links: {what} must be a list, not {array.GetRawText()}");
        int count = array.GetArrayLength();
        if (count > limit)
            throw new ArgumentException($"borrowed links: {count} {what}; at most {limit}");
        var items = array.EnumerateArray().ToList();
        if (items.Any(n => n.ValueKind != JsonValueKind.Number))
            throw new ArgumentException($"borrowed links: {what} must be numbers, not {array.GetRawText()}");
        return items;
    }

    /// <summary>The one policy: <c>$THAW_BORROW</c> when set, else what the caller said, else off.</summary>
    public static BorrowedLinks Decide(BorrowedLinks? said, string? environment) =>
        !string.IsNullOrWhiteSpace(environment) ? Parse(environment) : said ?? Off;

    /// <summary><see cref="Decide(BorrowedLinks?, string?)"/> with this process's <c>$THAW_BORROW</c>.</summary>
    public static BorrowedLinks Decide(BorrowedLinks? said) => Decide(said, Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>The helpers to borrow for a destination, and a note when the option does nothing
    /// because the destination is the only device.</summary>
    public (int[] Helpers, string? Note) Resolve(DeviceKind kind, int destination, int deviceCount)
    {
        if (Mode == BorrowMode.Off)
            return ([], null);
        if (deviceCount <= 1)
            return ([], $"borrowed links: {LinkShare.DeviceName(kind, destination)} is the only {(kind == DeviceKind.Cuda ? "GPU" : "device")}; " +
                        "the restore uses its own link");
        int[] helpers = Mode == BorrowMode.Auto
            ? Enumerable.Range(0, deviceCount).Where(o => o != destination).Take(Core.MaxHelpers).ToArray()
            : Devices.ToArray();
        if (Weights is not null && Weights.Count != helpers.Length + 1)
            throw new ArgumentException($"borrowed links: {Weights.Count} weights for {helpers.Length + 1} links (the destination's first)");
        return (helpers, null);
    }
}

/// <summary>What one link did in a restore with borrowed links.</summary>
/// <param name="Bytes">Tensor bytes it delivered into the destination.</param>
/// <param name="PlannedBytes">File bytes of the share it was given.</param>
/// <param name="TakenOverBytes">The destination's: bytes of dropped helpers' shares it copied.</param>
/// <param name="Status">0, or the core's error code that left the helper out or dropped it.</param>
/// <param name="Note">Why it was left out or dropped; empty otherwise.</param>
public sealed record LinkShare(string Device, int Ordinal, bool Borrowed, long Bytes, long PlannedBytes, long TakenOverBytes,
    int Lanes, int Status, string Note)
{
    /// <summary>How a device is named in logs: mock-N, cuda:N.</summary>
    public static string DeviceName(DeviceKind kind, int ordinal) => kind == DeviceKind.Mock ? $"mock-{ordinal}" : $"cuda:{ordinal}";

    /// <summary>"links: mock-0 5.1 GB direct, mock-1 5.0 GB borrowed" — which links served how many bytes.</summary>
    public static string Summary(IReadOnlyList<LinkShare> links) =>
        "links: " + string.Join(", ", links.Select(l => l.Describe()));

    private string Describe()
    {
        if (!Borrowed)
            return $"{Device} {Size(Bytes)} direct" + (TakenOverBytes > 0 ? $" ({Size(TakenOverBytes)} of it taken over)" : "");
        if (Status != 0 && Lanes == 0)
            return $"{Device} left out";
        return $"{Device} {Size(Bytes)} borrowed" + (Status != 0 ? " (dropped)" : "");
    }

    private static string Size(long bytes) => bytes switch
    {
        >= 1_000_000_000 => (bytes / 1e9).ToString("0.0", CultureInfo.InvariantCulture) + " GB",
        >= 1_000_000 => (bytes / 1e6).ToString("0.0", CultureInfo.InvariantCulture) + " MB",
        >= 1_000 => (bytes / 1e3).ToString("0.0", CultureInfo.InvariantCulture) + " kB",
        _ => $"{bytes} B",
    };
}
