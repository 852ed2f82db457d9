namespace Thaw.Interop.Pool;

/// <summary>The pinned memory a pool may hold when --budget-mib is not given: <c>$THAW_POOL_BUDGET_MIB</c>,
/// else for the automatic pool half of MemAvailable at its start, else a fixed default.</summary>
public static class PoolBudget
{
    /// <summary>Overrides the default budget, in MiB (--budget-mib still wins).</summary>
    public const string EnvironmentVariable = "THAW_POOL_BUDGET_MIB";
    /// <summary>The budget of a pool started by hand without --budget-mib.</summary>
    public const long FixedDefaultBytes = 32L << 30;
    private const long MaxMib = 1L << 30;

    /// <summary>The budget in bytes, or an error naming the variable when it is malformed.</summary>
    public static long Default(bool auto, out string? error)
    {
        error = null;
        string? configured = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(configured))
        {
            if (long.TryParse(configured.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long mib)
                && mib is >= 1 and <= MaxMib)
                return mib << 20;
            error = $"{EnvironmentVariable} must be a whole number of MiB from 1 to {MaxMib}, not '{configured}'";
            return 0;
        }
        return auto && MemAvailableBytes() is long available and > 0 ? Math.Max(available / 2, 1L << 20) : FixedDefaultBytes;
    }

    /// <summary>MemAvailable from /proc/meminfo, or null when it does not say.</summary>
    public static long? MemAvailableBytes(string meminfo = "/proc/meminfo")
    {
        try
        {
            foreach (string line in File.ReadLines(meminfo))
            {
                if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    continue;
                string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return parts.Length >= 2 && long.TryParse(parts[1], out long kib) && kib is > 0 and < long.MaxValue / 1024 ? kib * 1024 : null;
            }
        }
        catch (IOException)
        {
        }
        return null;
    }
}
