using System.CommandLine;

namespace Thaw.Cli.Commands;

/// <summary>Prints a shell script that asks thaw itself for completions through System.CommandLine's
/// [suggest] directive, so completions always match this executable's commands and flags.</summary>
internal sealed class CompletionCommand : Command
{
    private static readonly Dictionary<string, string> Scripts = new(StringComparer.Ordinal)
    {
        ["bash"] = """
            _thaw_complete() {
              local IFS=$'\n'
              COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
            }
            complete -o default -F _thaw_complete thaw
            """,
        ["zsh"] = """
            _thaw_complete() {
              local -a completions
              completions=("${(@f)$("${words[1]}" "[suggest:${CURSOR}]" "${BUFFER}" 2>/dev/null)}")
              compadd -a completions
            }
            compdef _thaw_complete thaw
            """,
    };

    private readonly Argument<string> _shell = new("shell") { Description = "bash or zsh" };

    public CompletionCommand() : base("completion", "print a shell completion script: eval \"$(thaw completion bash)\"")
    {
        _shell.Validators.Add(result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (!Scripts.ContainsKey(text))
                result.AddError($"shell must be one of {string.Join("|", Scripts.Keys)}, not '{text}'");
        });
        _shell.CompletionSources.Add([.. Scripts.Keys]);
        Add(_shell);
        SetAction(parse =>
        {
            Console.Out.WriteLine(Scripts[parse.GetRequiredValue(_shell)]);
            return 0;
        });
    }
}
