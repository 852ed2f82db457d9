namespace Thaw.Cli;

/// <summary>Positional arguments and --flags of one command line, with usage errors as exceptions.</summary>
internal sealed class Arguments
{
    private readonly Dictionary<string, string?> _flags = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public Arguments(IEnumerable<string> args, IReadOnlySet<string> switches)
    {
        using var e = args.GetEnumerator();
        while (e.MoveNext())
        {
            string a = e.Current;
            if (!a.StartsWith("--", StringComparison.Ordinal))
            {
                Positional.Add(a);
                continue;
            }
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                value = name[(eq + 1)..];
                name = name[..eq];
            }
            else if (!switches.Contains(name))
            {
                if (!e.MoveNext())
                    throw new UsageException($"--{name} needs a value");
                value = e.Current;
            }
            _flags[name] = value;
        }
    }

    public List<string> Positional { get; } = [];

    public string Require(int index, string what) =>
        index < Positional.Count ? Positional[index] : throw new UsageException($"missing {what}");

    public bool Has(string name)
    {
        _used.Add(name);
        return _flags.ContainsKey(name);
    }

    public string? Get(string name)
    {
        _used.Add(name);
        return _flags.TryGetValue(name, out string? value) ? value : null;
    }

    public long GetLong(string name, long fallback, long min = 0, long max = long.MaxValue)
    {
        string? text = Get(name);
        if (text is null)
            return fallback;
        if (!long.TryParse(text, out long value) || value < min || value > max)
            throw new UsageException($"--{name} must be an integer in [{min}, {max}], not '{text}'");
        return value;
    }

    public T GetEnum<T>(string name, T fallback) where T : struct, Enum
    {
        string? text = Get(name);
        if (text is null)
            return fallback;
        if (!Enum.TryParse(text, ignoreCase: true, out T value) || !Enum.IsDefined(value))
            throw new UsageException($"--{name} must be one of {string.Join("|", Enum.GetNames<T>()).ToLowerInvariant()}, not '{text}'");
        return value;
    }

    /// <summary>Rejects flags the command did not ask for and extra positionals.</summary>
    public void Finish(int positionalCount)
    {
        string? unknown = _flags.Keys.FirstOrDefault(k => !_used.Contains(k));
        if (unknown is not null)
            throw new UsageException($"unknown option --{unknown}");
        if (Positional.Count > positionalCount)
            throw new UsageException($"unexpected argument '{Positional[positionalCount]}'");
    }
}

internal sealed class UsageException(string message) : Exception(message);
