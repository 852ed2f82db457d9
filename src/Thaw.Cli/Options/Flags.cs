using System.CommandLine;
using System.CommandLine.Parsing;

namespace Thaw.Cli.Options;

/// <summary>Options with bounded values and the CLI's own error text: a bad value is a usage
/// error naming the option and its range, never a parser's type name.</summary>
internal static class Flags
{
    public static Option<long> Integer(string name, string description, long defaultValue, long min, long max)
    {
        var option = new Option<long>(name)
        {
            Description = description,
            HelpName = "N",
            DefaultValueFactory = _ => defaultValue,
        };
        option.CustomParser = result => ParseInteger(result, name, min, max, defaultValue);
        return option;
    }

    private static long ParseInteger(ArgumentResult result, string name, long min, long max, long fallback)
    {
        if (result.Tokens.Count == 0)
            return fallback;
        string text = result.Tokens[0].Value;
        if (long.TryParse(text, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out long value)
            && value >= min && value <= max)
            return value;
        result.AddError($"{name} must be an integer in [{min}, {max}], not '{text}'");
        return fallback;
    }

    /// <summary>One of an enum's names, lower-case; null when absent, so that a default that
    /// depends on the machine (the GPU when there is one) is decided when the command runs.</summary>
    public static Option<T?> Choice<T>(string name, string description) where T : struct, Enum
    {
        string[] names = Enum.GetNames<T>().Select(n => n.ToLowerInvariant()).ToArray();
        var option = new Option<T?>(name) { Description = description, HelpName = string.Join("|", names) };
        option.CustomParser = result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (text.Length > 0 && !char.IsDigit(text[0]) && Enum.TryParse(text, ignoreCase: true, out T value) && Enum.IsDefined(value))
                return value;
            result.AddError($"{name} must be one of {string.Join("|", names)}, not '{text}'");
            return null;
        };
        option.CompletionSources.Clear();
        option.CompletionSources.Add(names);
        return option;
    }

    public static Option<bool> Switch(string name, string description) => new(name) { Description = description };

    public static Option<string> Text(string name, string description, string helpName) =>
        new(name) { Description = description, HelpName = helpName };

    public static Argument<string> Path(string name, string description) => new(name) { Description = description };
}
