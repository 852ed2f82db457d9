using System.CommandLine;

namespace Thaw.Cli.Commands;

/// <summary>`thaw freeze` needs vLLM, so it runs in the Python package's `thaw` (thaw_vllm.cli),
/// which handles it before handing every other command to this executable. Listed here so that
/// help shows it and this executable, run directly, says where it lives.</summary>
internal sealed class FreezeCommand : Command
{
    public FreezeCommand() : base("freeze", "snapshot a live vLLM engine's processed weights (in the pip package's thaw, which has vLLM)")
    {
        TreatUnmatchedTokensAsErrors = false;
        SetAction(_ =>
        {
            Console.Error.WriteLine("thaw: error: thaw freeze needs vLLM: run it from the thaw command of the thaw_vllm wheel " +
                "(scripts/build_wheel.sh) installed beside vLLM");
            return 1;
        });
    }
}
