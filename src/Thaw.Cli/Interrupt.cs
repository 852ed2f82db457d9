namespace Thaw.Cli;

internal static class Interrupt
{
    /// <summary>Ctrl-C cancels the running operation, which stops at its next chunk and cleans up.</summary>
    public static CancellationTokenSource CancelOnCtrlC()
    {
        var source = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            source.Cancel();
        };
        return source;
    }
}
