using System.Diagnostics;

namespace Thaw.Tests;

/// <summary>The built `thaw` executable, run as a user would run it: the NativeAOT one that
/// scripts/build.sh publishes, else the same program as this test run's own build made it
/// (Thaw.Tests references Thaw.Cli), so that a plain `dotnet test` runs these tests too.</summary>
internal static class ThawCli
{
    public static string Path { get; } = Locate();

    private static string Locate()
    {
        string testDirectory = TestContext.CurrentContext.TestDirectory;   // tests/Thaw.Tests/bin/<Configuration>/net10.0
        string repo = System.IO.Path.GetFullPath(System.IO.Path.Combine(testDirectory, "../../../../.."));
        string published = System.IO.Path.Combine(repo, "build/publish/cli/thaw");
        string configuration = new DirectoryInfo(testDirectory).Parent!.Name;
        string built = System.IO.Path.Combine(repo, "src/Thaw.Cli/bin", configuration, "net10.0/thaw");
        return File.Exists(published) || !File.Exists(built) ? published : built;
    }

    public static void RequireBuilt()
    {
        if (!File.Exists(Path))
            Assert.Ignore($"{Path} is not built (scripts/build.sh or dotnet build builds it)");
    }

    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(string arguments)
    {
        RequireBuilt();
        using var process = Process.Start(new ProcessStartInfo(Path, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        string stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return new Result(process.ExitCode, stdout.Result, stderr);
    }

    /// <summary>Asserts the one refusal a user should see: exit 1 and a single `thaw: error:` line naming
    /// <paramref name="file"/> and each of <paramref name="mentions"/>, with no runtime text.</summary>
    public static void AssertRefused(Result r, string file, params string[] mentions)
    {
        Assert.That(r.ExitCode, Is.EqualTo(1), $"exit code; stderr: {r.Stderr}");
        string[] lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1), $"one line on stderr: {r.Stderr}");
        Assert.That(lines[0], Does.StartWith("thaw: error: "));
        Assert.That(lines[0], Does.Contain(file));
        foreach (string m in mentions)
            Assert.That(lines[0], Does.Contain(m));
        RuntimeText.AssertAbsent(lines[0]);
    }
}

/// <summary>Fragments of .NET's own exception text: none may reach a user.</summary>
internal static class RuntimeText
{
    private static readonly string[] Fragments =
    [
        "Exception", "   at ", "LineNumber", "BytePositionInLine", "One of the identified items",
        "requires an element of type", "Cannot read", "UTF-16 JSON text", "is an invalid start of a value",
    ];

    public static void AssertAbsent(string message)
    {
        foreach (string f in Fragments)
            Assert.That(message, Does.Not.Contain(f), "runtime text in a refusal");
    }
}
