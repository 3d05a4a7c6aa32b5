package demo;

/** A class whose compiled form Gradle stores in and restores from Kura. */
public final class Main {
    private Main() {}

    public static String greeting(String name) {
        return "hello " + name + " from a class compiled once and cached in Kura";
    }

    public static void main(String[] args) {
        System.out.println(greeting(args.length > 0 ? args[0] : "kura"));
    }
}
