using System.CommandLine;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using Thaw.Cli.Commands;
using Thaw.Interop;

namespace Thaw.Cli;

/// <summary>Exit codes: 0 success, 1 failure (one `thaw: error: ...` line), 2 usage error.</summary>
internal static class Program
{
    public static int Main(string[] args)
    {
        RootCommand root = ThawRootCommand.Create();
        if (args.Length == 0)
        {
            root.Parse(["--help"]).Invoke();
            return 2;
        }
        ParseResult parse = root.Parse(Aliases(args));
        if (parse.Action is ParseErrorAction)
        {
            // An unknown word is the more useful message than the missing subcommand it also causes.
            ParseError error = parse.Errors.FirstOrDefault(e => parse.UnmatchedTokens.Count > 0 && e.Message.Contains($"'{parse.UnmatchedTokens[0]}'"))
                ?? parse.Errors[0];
            string message = error.Message.TrimEnd('.');
            Console.Error.WriteLine($"thaw: error: {char.ToLowerInvariant(message[0])}{message[1..]} (see '{CommandPath(parse)} --help')");
            return 2;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is ThawException or IOException or UnauthorizedAccessException or ArgumentException
                                      or OperationCanceledException)
        {
            Console.Error.WriteLine($"thaw: error: {e.Message}");
            return 1;
        }
    }

    /// <summary>`thaw help [command...]` and `thaw version`, as before the move to System.CommandLine.</summary>
    private static string[] Aliases(string[] args) => args[0] switch
    {
        "help" => [.. args[1..], "--help"],
        "version" when args.Length == 1 => ["--version"],
        _ => args,
    };

    private static string CommandPath(ParseResult parse)
    {
        var names = new List<string>();
        for (var c = parse.CommandResult; c is not null; c = c.Parent as System.CommandLine.Parsing.CommandResult)
            names.Add(c.Command is RootCommand ? "thaw" : c.Command.Name);
        names.Reverse();
        return string.Join(' ', names);
    }
}
